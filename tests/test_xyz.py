"""X/Y/Z plot axes, applied to copies of p as the WebUI's xyz_grid does, then run."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from host_harness import Host, sega_values

from sega.args import SegaArgs
from sega_webui import xyz


class AxisOption:
    """The constructor signature of scripts/xyz_grid.py's AxisOption (WebUI 1.10.1)."""

    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply = label, type, apply
        self.format_value, self.confirm, self.cost, self.choices, self.prepare = format_value, confirm, cost, choices, prepare


@pytest.fixture(scope="module")
def host():
    return Host()


@pytest.fixture(scope="module")
def axes():
    return {a.label: a for a in xyz.axes(AxisOption, 4)}


def run_cell(host, axis, value, values, base_values=None, kind="sd1", **p_kwargs):
    """One grid cell: copy p, apply the axis, process_images."""
    w = host.w
    w.shared.sd_model = __import__("host_harness").model(kind)
    runner = w.scripts.ScriptRunner([(host.script, len(base_values or sega_values()))])
    p = w.processing.StableDiffusionProcessingTxt2Img(
        prompt="a photo of a face", steps=6, script_args=[None] + (base_values or sega_values()), scripts=runner,
        **p_kwargs,
    )
    pc = copy.copy(p)
    if axis.confirm:
        axis.confirm(pc, values)
    axis.apply(pc, axis.type(value) if not isinstance(value, axis.type if isinstance(axis.type, type) else str) else value, values)
    result = w.processing.process_images(pc)
    assert getattr(p, xyz.OVERRIDES_ATTR, None) is None  # the original p is untouched
    return result


def reproduce(host, result, **kwargs):
    args = SegaArgs.from_infotext(result.extra_generation_params)
    values = args.ui_values() if args is not None else sega_values(enabled=False)
    return host.generate(values, prompt="a photo of a face", steps=6, **kwargs).images


CASES = [
    ("[SEGA] Edit scale", ["3", "8"], "SEGA scale"),
    ("[SEGA] Threshold", ["0.8", "0.99"], "SEGA threshold"),
    ("[SEGA] Warm-up", ["1", "50%"], "SEGA warmup"),
    ("[SEGA] Cooldown", ["3", "5"], "SEGA cooldown"),
    ("[SEGA] Weight", ["0.5", "2"], "SEGA weight"),
    ("[SEGA] Momentum scale", ["0", "0.9"], "SEGA momentum"),
    ("[SEGA] Momentum beta", ["0.1", "0.9"], "SEGA momentum beta"),
    ("[SEGA] Concepts", ["smile", "hat\\n-glasses"], "SEGA concepts"),
    ("[SEGA] Concepts S/R", ["smile", "frown"], "SEGA concepts"),
    ("[SEGA] Concept 1 edit scale", ["2", "9"], "SEGA concepts"),
    ("[SEGA] Concept 2 threshold", ["0.5", "0.99"], "SEGA concepts"),
    ("[SEGA] Concept 2 warm-up", ["1", "3"], "SEGA concepts"),
    ("[SEGA] Concept 1 cooldown", ["2", "60%"], "SEGA concepts"),
    ("[SEGA] Concept 1 weight", ["0", "3"], "SEGA concepts"),
]


@pytest.mark.parametrize("label, values, key", CASES, ids=[c[0] for c in CASES])
def test_each_value_gives_its_own_reproducible_image(host, axes, label, values, key):
    axis = axes[label]
    base = sega_values("smile\n-glasses", warmup="1")
    images = []
    for value in values:
        typed = [axis.type(v) for v in values]
        result = run_cell(host, axis, axis.type(value), typed, base)
        assert host.reported == [] and not any(c.startswith("SEGA off") for c in result.comments), result.comments
        assert key in result.extra_generation_params
        assert torch.equal(reproduce(host, result), result.images)
        images.append(result.images)
    assert not torch.equal(images[0], images[1])


def test_enabled_and_hires_axes(host, axes):
    off = run_cell(host, axes["[SEGA] Enabled"], "False", ["True", "False"], sega_values())
    on = run_cell(host, axes["[SEGA] Enabled"], "True", ["True", "False"], sega_values(enabled=False))
    assert torch.equal(off.images, host.generate(None, steps=6).images)
    assert not torch.equal(on.images, off.images) and on.extra_generation_params["SEGA concepts"] == "smile\n-glasses"
    hr = dict(enable_hr=True, hr_second_pass_steps=2, denoising_strength=0.5)
    no_hires = run_cell(host, axes["[SEGA] Apply in hires. fix pass"], "False", ["True", "False"], sega_values(), **hr)
    assert no_hires.extra_generation_params["SEGA hires"] == "False"


def test_confirm_refuses_bad_values_before_the_grid(axes):
    with pytest.raises(RuntimeError, match=r"\[SEGA\] SEGA threshold: must be between 0 and 1, got 7"):
        axes["[SEGA] Threshold"].confirm(None, [0.9, 7.0])
    with pytest.raises(RuntimeError, match=r"concepts\[1\]\.weight: cannot be negative"):
        axes["[SEGA] Concept 1 weight"].confirm(None, [-1.0])


def test_a_missing_concept_is_reported_under_the_image(host, axes):
    result = run_cell(host, axes["[SEGA] Concept 4 edit scale"], 3.0, [3.0], sega_values("smile"))
    assert list(result.comments) == ["SEGA off (concepts[4].scale): there is no concept 4 (the concepts box has 1)"]


def test_a_search_text_missing_from_the_concepts_is_reported_under_the_image(host, axes):
    # As the WebUI's own Prompt S/R refuses a search text the prompt lacks.
    result = run_cell(host, axes["[SEGA] Concepts S/R"], "frown", ["glasses", "frown"], sega_values("smile"))
    assert list(result.comments) == ["SEGA off (concepts): Concepts S/R did not find 'glasses' in the concepts"]


def test_axes_are_registered_once_with_the_webui_xyz_module(host):
    module = types.ModuleType("xyz_grid")
    module.AxisOption = AxisOption
    module.axis_options = [AxisOption("Nothing", str, lambda p, x, xs: None)]
    script_class = type("Script", (), {"__module__": "xyz_grid.py"})
    data = types.SimpleNamespace(script_class=script_class, module=module)
    scripts = host.w.scripts
    saved = list(scripts.scripts_data)
    scripts.scripts_data[:] = [data]
    try:
        host.w.registration.on_before_ui()
        host.w.registration.on_before_ui()
    finally:
        scripts.scripts_data[:] = saved
    labels = [a.label for a in module.axis_options]
    assert len(labels) == len(set(labels))
    assert "[SEGA] Threshold" in labels and "[SEGA] Concept 8 weight" in labels


def test_invert_axis_edits_the_input_image_per_cell(host, axes):
    import sega_webui.edit as edit

    axis = axes["[SEGA] Edit the input image (inversion)"]
    assert axis.choices() == ["True", "False"]
    w = host.w
    w.shared.sd_model = __import__("host_harness").model("sd1")
    init = __import__("host_harness").init_latent()
    cells = {}
    for value in ("True", "False"):
        runner = w.scripts.ScriptRunner([(host.script, len(sega_values()))])
        p = w.processing.StableDiffusionProcessingImg2Img(
            prompt="a photo of a face", steps=6, sampler_name="Euler a", init_images=init, denoising_strength=0.5,
            script_args=[None] + sega_values(concepts="", warmup="0"), scripts=runner)
        pc = copy.copy(p)
        axis.apply(pc, value, ["True", "False"])
        cells[value] = w.processing.process_images(pc)
    edit.clear_cache()
    assert (cells["True"].images - init).abs().max() < 1e-5  # remade: the photo
    assert cells["True"].extra_generation_params["SEGA invert"] == "True"
    assert (cells["False"].images - init).abs().max() > 1.0  # no run at all without concepts
    assert "SEGA invert" not in cells["False"].extra_generation_params


@pytest.mark.parametrize("label, key", [("[SEGA] Mask", "SEGA mask"), ("[SEGA] Concept 1 mask", "SEGA concepts")])
def test_mask_axes(host, axes, label, key):
    axis = axes[label]
    assert axis.choices() == ["threshold", "attention", "intersect"]
    base = sega_values("smile\n-glasses", warmup="1")
    size = dict(width=128, height=128)  # the model's latent/4 grid needs a 16 × 16 latent for 4 × 4
    images = []
    for value in ("attention", "intersect"):
        result = run_cell(host, axis, value, ["attention", "intersect"], base, kind="sd1+attn", **size)
        assert host.reported == [] and not any(c.startswith("SEGA") for c in result.comments), result.comments
        assert value in result.extra_generation_params[key]
        assert torch.equal(reproduce(host, result, kind="sd1+attn", **size), result.images)
        images.append(result.images)
    assert not torch.equal(images[0], images[1])
    with pytest.raises(RuntimeError, match="mask: must be one of threshold, attention, intersect, got 'soft'"):
        axis.confirm(None, ["attention", "soft"])


def test_a_cell_does_not_claim_the_previous_cells_settings(host, axes):
    # X/Y/Z copies p shallowly for every cell: the cells share one parameters dict
    axis = axes["[SEGA] Edit scale"]
    w = host.w
    w.shared.sd_model = __import__("host_harness").model("sd1")
    runner = w.scripts.ScriptRunner([(host.script, len(sega_values()))])
    p = w.processing.StableDiffusionProcessingTxt2Img(
        prompt="a photo of a face", steps=6, script_args=[None] + sega_values("smile", warmup="1"), scripts=runner)
    cells = []
    for value in (8.0, 5.0):  # 5 is the default: not written
        pc = copy.copy(p)
        axis.apply(pc, value, [8.0, 5.0])
        cells.append(w.processing.process_images(pc))
    assert cells[0].extra_generation_params["SEGA scale"] == "8"
    assert "SEGA scale" not in cells[1].extra_generation_params
    assert "SEGA scale" not in p.extra_generation_params


def test_the_invert_axis_is_offered_in_img2img_only():
    import importlib.util

    import webui

    webui.load()
    spec = importlib.util.spec_from_file_location("xyz_grid_for_test", webui.STUB / "scripts" / "xyz_grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    found = {a.label: a for a in xyz.axes(grid.AxisOption, 2, grid.AxisOptionImg2Img)}
    invert = found["[SEGA] Edit the input image (inversion)"]
    assert type(invert) is grid.AxisOptionImg2Img and invert.is_img2img
    assert type(found["[SEGA] Edit scale"]) is grid.AxisOption  # offered in both tabs
