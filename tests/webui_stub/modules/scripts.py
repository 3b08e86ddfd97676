"""modules/scripts.py: the Script base and a runner that calls AlwaysVisible scripts'
hooks with their slice of `p.script_args`, reporting and swallowing exceptions."""

import traceback

AlwaysVisible = object()


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


class ScriptRunner:
    def __init__(self, scripts_with_args):
        """scripts_with_args: [(script, n_args)]; sets args_from/args_to like the host."""
        self.alwayson_scripts = []
        start = 1  # position 0 is the selectable-script dropdown in the host
        for script, n in scripts_with_args:
            script.args_from, script.args_to = start, start + n
            start += n
            self.alwayson_scripts.append(script)
        self.reported = []

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

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)
