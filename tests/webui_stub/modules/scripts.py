"""modules/scripts.py: the Script base, script loading (`scripts_data`, one module per file named
after the file, as script_loading.load_module names it) and a runner that calls AlwaysVisible
scripts' hooks with their slice of `p.script_args`, reporting and swallowing exceptions."""

import importlib.util
import inspect
import os
import traceback
from dataclasses import dataclass

from modules import script_callbacks

AlwaysVisible = object()


class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class Script:
    args_from = None
    args_to = None
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return []


@dataclass
class ScriptClassData:
    script_class: type
    path: str
    basedir: str
    module: object


scripts_data = []


def load_scripts(paths):
    """Clears the callbacks, then imports every script file in order (the WebUI's own
    scripts/ first, then extensions) and makes fresh, empty runners for both tabs."""
    global scripts_txt2img, scripts_img2img
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    for path in paths:
        spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for obj in module.__dict__.values():
            if inspect.isclass(obj) and issubclass(obj, Script) and obj is not Script:
                scripts_data.append(ScriptClassData(obj, str(path), os.path.dirname(path), module))
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


class ScriptRunner:
    def __init__(self, scripts_with_args=()):
        """scripts_with_args: [(script, n_args)]; sets args_from/args_to like the host."""
        self.scripts = []
        self.alwayson_scripts = []
        self.selectable_scripts = []
        start = 1  # position 0 is the selectable-script dropdown in the host
        for script, n in scripts_with_args:
            script.args_from, script.args_to = start, start + n
            start += n
            self.alwayson_scripts.append(script)
            self.scripts.append(script)
        self.inputs = []
        self.reported = []

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for data in scripts_data:
            script = data.script_class()
            script.is_img2img = is_img2img
            visibility = script.show(is_img2img)
            if visibility is AlwaysVisible:
                self.alwayson_scripts.append(script)
                self.scripts.append(script)
            elif visibility:
                self.selectable_scripts.append(script)
                self.scripts.append(script)

    def setup_ui(self):
        self.inputs = [None]
        for script in self.scripts:
            controls = script.ui(script.is_img2img) or []
            script.args_from, script.args_to = len(self.inputs), len(self.inputs) + len(controls)
            self.inputs.extend(controls)
        return self.inputs

    def _each(self, hook, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            fn = getattr(script, hook, None)
            if fn is None:
                continue
            try:
                fn(p, *extra, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception:
                self.reported.append(traceback.format_exc())

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._each("process_before_every_sampling", p, **kwargs)

    def before_process_batch(self, p, **kwargs):
        self._each("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._each("process_batch", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._each("postprocess_batch", p, images=images, **kwargs)

    def on_mask_blend(self, p, mba):
        self._each("on_mask_blend", p, mba)

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)


scripts_txt2img = ScriptRunner()
scripts_img2img = ScriptRunner()
