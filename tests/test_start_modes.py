"""Settings → SEGA, the X/Y/Z axes and the API check exist however the WebUI starts, in both
tabs, once — replayed in the stand-in in the order WebUI 1.10.1's webui.py starts."""

from __future__ import annotations

import contextlib
import types

import pytest

from sega.fields import FIELDS

pytest.importorskip("gradio")
import webui  # noqa: E402

W = webui.load()
from modules import script_callbacks, scripts, shared, ui  # noqa: E402
from modules.api import api  # noqa: E402

from sega_webui import xyz  # noqa: E402

XYZ = webui.STUB / "scripts" / "xyz_grid.py"
SEGA = webui.ROOT / "scripts" / "sega.py"
SEGA_AXES = len(xyz.axes(lambda *a, **k: None, 8))


class App:
    """Stands in for the FastAPI app: records the middleware added to it."""

    def __init__(self):
        self.middleware = []

    def add_middleware(self, cls, **kwargs):
        self.middleware.append(cls)


@contextlib.contextmanager
def isolated(settings_callbacks=True):
    """Run start sequences without disturbing the loaded stand-in the other tests use."""
    saved_lists = {k: list(v) for k, v in script_callbacks.callbacks.items()}
    saved = (list(scripts.scripts_data), scripts.scripts_txt2img, scripts.scripts_img2img)
    saved_labels = dict(shared.opts.data_labels)
    real_settings = script_callbacks.ui_settings_callback
    if not settings_callbacks:
        script_callbacks.ui_settings_callback = lambda: None
    for key in [k for k in shared.opts.data_labels if k.startswith("sega_")]:
        del shared.opts.data_labels[key]
    try:
        yield
    finally:
        script_callbacks.ui_settings_callback = real_settings
        for k, v in saved_lists.items():
            script_callbacks.callbacks[k][:] = v
        scripts.scripts_data[:] = saved[0]
        scripts.scripts_txt2img, scripts.scripts_img2img = saved[1:]
        shared.opts.data_labels.clear()
        shared.opts.data_labels.update(saved_labels)


def start(mode, files):
    """webui.py: `--nowebui` builds the API (which builds the UI) before the before_ui and
    app_started callbacks; the full UI (with or without --api) runs before_ui first."""
    scripts.load_scripts(files)
    app = App()
    if mode == "--nowebui":
        api.Api(app)
        script_callbacks.before_ui_callback()
        script_callbacks.app_started_callback(None, app)
    else:
        script_callbacks.before_ui_callback()
        demo = ui.create_ui()
        if mode == "--api":
            api.Api(app)
        script_callbacks.app_started_callback(demo, app)
    return app


def xyz_scripts():
    return [s for runner in (scripts.scripts_txt2img, scripts.scripts_img2img) for s in runner.scripts
            if s.title() == "X/Y/Z plot"]


@pytest.mark.parametrize("settings_callbacks", [True, False], ids=["ui_settings run", "ui_settings never run"])
@pytest.mark.parametrize("files", [[XYZ, SEGA], [SEGA, XYZ]], ids=["WebUI load order", "X/Y/Z loaded after SEGA"])
@pytest.mark.parametrize("mode", ["full UI", "--api", "--nowebui"])
def test_axes_settings_and_api_check_exist_once_in_both_tabs(mode, files, settings_callbacks):
    with isolated(settings_callbacks):
        start(mode, files)
        app = start(mode, files)  # a UI reload loads every script again
        plots = xyz_scripts()
        assert [s.is_img2img for s in plots] == [False, True]
        for plot in plots:
            labels = [a.label for a in plot.current_axis_options]
            ours = [label for label in labels if label.startswith(xyz.PREFIX)]
            # editing the input image is an img2img axis only
            assert len(ours) == SEGA_AXES - (not plot.is_img2img) and len(set(ours)) == len(ours)
            assert ("[SEGA] Edit the input image (inversion)" in ours) == plot.is_img2img
            assert "[SEGA] Threshold" in ours and "[SEGA] Concept 8 weight" in ours
            # The API picks an axis by its index in this list; applying it sets our override.
            axis = plot.current_axis_options[labels.index("[SEGA] Threshold")]
            p = types.SimpleNamespace()
            axis.apply(p, 0.9, [0.9])
            assert p.sega_overrides == {"threshold": 0.9}
        labels = shared.opts.data_labels
        assert labels["sega_max_concepts"].section == ("sega", "SEGA")
        assert {"sega_low_vram", "sega_default_threshold", "sega_default_warmup"} <= set(labels)
        assert [m.__name__ for m in app.middleware] == ["SegaRequestValidator"]
        for runner, tab in ((scripts.scripts_txt2img, "txt2img"), (scripts.scripts_img2img, "img2img")):
            sega = [s for s in runner.alwayson_scripts if s.title() == "SEGA"]
            assert len(sega) == 1
            ids = [getattr(c, "elem_id", None) for c in runner.inputs[sega[0].args_from:sega[0].args_to]]
            assert ids == [f"sega_{tab}_{f.name}" for f in FIELDS]
            assert sega[0].infotext_fields and sega[0].paste_field_names
        cfg = script_callbacks.callbacks["cfg_denoiser"]
        assert len(cfg) == 1  # our CFG callbacks once, not once per load
