"""What SEGA registers with the WebUI besides its CFG callbacks: Settings → SEGA, the X/Y/Z
plot axes and the API request check — and when, so that they exist however the WebUI starts.

WebUI 1.10.1 calls extensions at different moments per start mode (webui.py,
modules/api/api.py, modules/ui.py):

- full UI (also with --api): the before_ui callbacks, then `ui.create_ui()` — which runs the
  ui_settings callbacks first and then every script's ui(), where the X/Y/Z script copies
  the module's axis list for its tab — then app_started;
- --nowebui: building the API object calls `ui.create_ui()` itself, and only afterwards are
  the before_ui and app_started callbacks run: axes added in before_ui never reach the plot.

So settings and axes are registered as soon as our script is imported — the WebUI imports
its own scripts (xyz_grid.py) before extensions' — and again, idempotently, from ui_settings
(inside create_ui, before any ui() in both modes) and before_ui; axes also go into X/Y/Z
scripts whose ui() has already run. Everything is keyed by name, so nothing is added twice.
"""

from __future__ import annotations

from modules import script_callbacks, shared

from sega.concepts import DEFAULT_MAX_CONCEPTS
from sega.errors import SegaInputError
from sega.fields import FIELDS
from sega_webui import api, edit, maps, xyz

SETTINGS_SECTION = ("sega", "SEGA")
SETTING_PREFIX = "sega_default_"


def max_concepts() -> int:
    return int(getattr(shared.opts, "sega_max_concepts", DEFAULT_MAX_CONCEPTS) or DEFAULT_MAX_CONCEPTS)


def ui_defaults() -> dict:
    """The accordion's defaults: the built-in ones, as changed in Settings → SEGA."""
    out = {}
    for f in FIELDS:
        if f.name in ("enabled", "concepts"):
            continue
        value = getattr(shared.opts, SETTING_PREFIX + f.name, None)
        if value is None:
            continue
        try:
            out[f.name] = f.coerce(value)
        except SegaInputError:
            continue  # a bad saved setting falls back to the built-in default
    return out


def setting_options() -> dict:
    """Settings → SEGA: key → shared.OptionInfo."""
    import gradio as gr

    section = SETTINGS_SECTION
    options = {
        "sega_max_concepts": shared.OptionInfo(
            DEFAULT_MAX_CONCEPTS, "Most concepts per generation", gr.Slider,
            {"minimum": 1, "maximum": 16, "step": 1}, section=section),
        "sega_low_vram": shared.OptionInfo(
            False, "Low VRAM: evaluate concepts in model calls of their own instead of widening the batch "
            "(same images, peak memory near a plain generation's, a little slower)", gr.Checkbox, section=section),
    }
    for f in FIELDS:
        if f.name in ("enabled", "concepts"):
            continue
        label = f"Default {f.label.lower()}" + (f" ({f.symbol})" if f.symbol else "")
        if f.kind == "float":
            info = shared.OptionInfo(f.default, label, gr.Slider,
                                     {"minimum": f.minimum, "maximum": f.maximum, "step": f.step}, section=section)
        elif f.kind == "bool":
            info = shared.OptionInfo(f.default, label, gr.Checkbox, section=section)
        elif f.kind == "choice":
            info = shared.OptionInfo(f.default, label, gr.Radio, {"choices": list(f.choices)}, section=section)
        else:
            info = shared.OptionInfo(f.format(f.default), label, gr.Textbox, section=section)
        options[SETTING_PREFIX + f.name] = info
    options[maps.SAVE_OPTION] = maps.save_option(section)
    options[edit.CACHE_OPTION] = shared.OptionInfo(
        edit.CACHE_DEFAULT, "Inversions kept for editing the same photo again (each about 1.4 MB per image "
        "at 512², 20 steps; 0: invert every time)", gr.Slider, {"minimum": 0, "maximum": 32, "step": 1},
        section=section)
    return options


def add_settings() -> None:
    labels = shared.opts.data_labels
    for key, info in setting_options().items():
        if key not in labels:
            shared.opts.add_option(key, info)


def find_xyz_module():
    from modules import scripts

    for data in getattr(scripts, "scripts_data", []):
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid") and hasattr(data.module, "AxisOption"):
            return data.module
    return None


def add_xyz_axes() -> None:
    module = find_xyz_module()
    if module is None:
        return
    _append_missing(module.axis_options, xyz.axes(module.AxisOption, max_concepts(),
                                                  getattr(module, "AxisOptionImg2Img", None)))
    ours = [a for a in module.axis_options if str(getattr(a, "label", "")).startswith(xyz.PREFIX)]
    # X/Y/Z scripts whose ui() already ran (--nowebui) plot from their own copy of the list.
    from modules import scripts

    script_class = getattr(module, "Script", None)
    for runner in (getattr(scripts, "scripts_txt2img", None), getattr(scripts, "scripts_img2img", None)):
        for script in getattr(runner, "scripts", None) or []:
            if script_class is not None and isinstance(script, script_class) and isinstance(
                    getattr(script, "current_axis_options", None), list):
                # As the plot's own ui() filters: an img2img-only axis not in the txt2img tab.
                tab = getattr(script, "is_img2img", None)
                _append_missing(script.current_axis_options, [
                    a for a in ours if getattr(a, "is_img2img", None) in (None, tab) or type(a) is module.AxisOption])


def _append_missing(options: list, axes: list) -> None:
    labels = {getattr(a, "label", None) for a in options}
    options.extend(a for a in axes if a.label not in labels)


def on_ui_settings() -> None:
    add_settings()
    add_xyz_axes()


def on_before_ui() -> None:
    add_xyz_axes()


def on_app_started(demo, app) -> None:
    try:
        from modules.infotext_utils import parse_generation_parameters
    except ImportError:  # pragma: no cover - older WebUI
        parse_generation_parameters = None
    api.install(app, max_concepts, parse_generation_parameters)


def register() -> None:
    """Called when the WebUI imports our script (at start and on every UI reload)."""
    for step in (add_settings, add_xyz_axes):
        try:
            step()
        except Exception as e:  # the callbacks below try again; the script must load regardless
            print(f"[SEGA] {step.__name__} while loading: {e}")
    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_before_ui(on_before_ui)
    script_callbacks.on_app_started(on_app_started)
