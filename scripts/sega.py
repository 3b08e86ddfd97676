"""The SEGA accordion in txt2img and img2img, and the hooks that start and end SEGA per generation.

The guidance lives in `sega/` (host-free), the WebUI sampling-loop adapter in
`sega_webui/host.py`; this file only wires them to the WebUI's script API.
"""

from modules import scripts

from sega.args import SegaArgs
from sega.errors import SegaInputError
from sega_webui import host, registration
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
            host.begin_generation(p, None)
            p.comment(f"SEGA off ({e.field}): {e.problem}")
            return
        host.begin_generation(p, sega_args)
        if sega_args.active:
            p.extra_generation_params.update(sega_args.to_infotext())

    def process_before_every_sampling(self, p, *args, **kwargs):
        host.begin_pass(p)

    def postprocess(self, p, processed, *args):
        host.end_generation(p)
