"""The SEGA accordion in txt2img and img2img, and the hooks that start and end SEGA per generation.

The guidance lives in `sega/` (host-free), the WebUI sampling-loop adapter in
`sega_webui/host.py`; this file only wires them to the WebUI's script API.
"""

from modules import scripts

from sega.args import SegaArgs
from sega.errors import SegaInputError
from sega_webui import host, registration
from sega_webui import maps as sega_maps
from sega_webui.xyz import OVERRIDES_ATTR

host.register_callbacks()
registration.register()


class SegaScript(scripts.Script):
    def title(self):
        return "SEGA"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from sega_webui import ui  # gradio only where a UI is built

        components, self.infotext_fields, self.paste_field_names = ui.build(
            "img2img" if is_img2img else "txt2img", registration.ui_defaults(), registration.max_concepts()
        )
        return components

    def process(self, p, *args):
        try:
            sega_args = SegaArgs.from_values(args, registration.max_concepts(), getattr(p, OVERRIDES_ATTR, None))
        except SegaInputError as e:
            host.decline(p, f"({e.field}): {e.problem}")
            sega_maps.begin_generation(p, None)
            return
        if sega_args.invert and not hasattr(p, "init_images"):
            # A txt2img infotext or an old payload may carry it; there is no image to invert.
            sega_args = sega_args.with_values(invert=False)
            if sega_args.active:
                p.comment("SEGA: 'Edit the input image' works in img2img only; ignored here")
        host.begin_generation(p, sega_args, (self.args_from, self.args_to))
        sega_maps.begin_generation(p, sega_args)

    def before_process_batch(self, p, *args, **kwargs):
        host.begin_batch(p)

    def process_before_every_sampling(self, p, *args, **kwargs):
        host.begin_pass(p)
        sega_maps.after_begin_pass(p, getattr(p, host.RUN_ATTR, None))

    def postprocess_batch(self, p, *args, **kwargs):
        host.end_batch(p)

    def postprocess(self, p, processed, *args):
        try:
            sega_maps.postprocess(p, processed, sega_maps.webui_font_factory(), sega_maps.saver(p))
        finally:
            host.end_generation(p)
