"""modules/script_callbacks.py: the CFG callbacks' params objects, the start-up callbacks, and
runners that report and swallow a callback's exception, as the host does."""

import dataclasses
import inspect
import traceback


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


callbacks = {"cfg_denoiser": [], "cfg_denoised": [], "cfg_after_cfg": [], "before_ui": [], "ui_settings": [],
             "app_started": []}
scripts = {}  # callback → the file that registered it (the host records it from the stack)
reported = []  # what the host would have printed


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = "unnamed"


def ordered_callbacks(category):
    """The host's order (registration order; 1.10's user ordering is not mirrored)."""
    return [ScriptCallback(scripts.get(c), c) for c in callbacks[category]]


def remove_callbacks_for_function(fn):
    for lst in callbacks.values():
        if fn in lst:
            lst.remove(fn)


def clear_callbacks():
    for v in callbacks.values():
        v.clear()


def _run(kind, *args):
    for c in list(callbacks[kind]):
        try:
            c(*args)
        except Exception:
            reported.append(traceback.format_exc())


def cfg_denoiser_callback(params):
    _run("cfg_denoiser", params)


def cfg_denoised_callback(params):
    _run("cfg_denoised", params)


def cfg_after_cfg_callback(params):
    _run("cfg_after_cfg", params)


def ui_settings_callback():
    _run("ui_settings")


def before_ui_callback():
    _run("before_ui")


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def _registrar(kind):
    def register(callback, *, name=None):
        callbacks[kind].append(callback)
        caller = next((f.filename for f in inspect.stack()[1:] if f.filename != __file__), None)
        scripts[callback] = caller

    register.__name__ = f"on_{kind}"
    return register


on_cfg_denoiser = _registrar("cfg_denoiser")
on_cfg_denoised = _registrar("cfg_denoised")
on_cfg_after_cfg = _registrar("cfg_after_cfg")
on_before_ui = _registrar("before_ui")
on_ui_settings = _registrar("ui_settings")
on_app_started = _registrar("app_started")
