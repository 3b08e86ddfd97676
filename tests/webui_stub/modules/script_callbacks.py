"""The CFG callbacks of modules/script_callbacks.py: params objects and runners that
report and swallow a callback's exception, as the host does."""

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
reported = []  # what the host would have printed


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


def on_cfg_denoiser(callback, *, name=None):
    callbacks["cfg_denoiser"].append(callback)


def on_cfg_denoised(callback, *, name=None):
    callbacks["cfg_denoised"].append(callback)


def on_cfg_after_cfg(callback, *, name=None):
    callbacks["cfg_after_cfg"].append(callback)


def on_before_ui(callback, *, name=None):
    callbacks["before_ui"].append(callback)


def on_ui_settings(callback, *, name=None):
    callbacks["ui_settings"].append(callback)


def on_app_started(callback, *, name=None):
    callbacks["app_started"].append(callback)
