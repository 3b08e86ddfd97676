"""The SEGA accordion in txt2img and the hooks that start and end SEGA per generation.

The guidance lives in `sega/` (host-free), the WebUI sampling-loop adapter in
`sega_webui/host.py`; this file only wires them to the WebUI's script API.
"""

from modules import scripts, shared

from sega.args import SegaArgs
from sega.concepts import DEFAULT_MAX_CONCEPTS
from sega.errors import SegaInputError
from sega.fields import FIELDS
from sega_webui import host

host.register_callbacks()


def max_concepts() -> int:
    return int(getattr(shared.opts, "sega_max_concepts", DEFAULT_MAX_CONCEPTS) or DEFAULT_MAX_CONCEPTS)


class SegaScript(scripts.Script):
    def title(self):
        return "SEGA"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr  # here, so the hooks can be used (and tested) without a UI

        tab = "img2img" if is_img2img else "txt2img"
        components = []
        with gr.Accordion("SEGA", open=False, elem_id=f"sega_{tab}"):
            for f in FIELDS:
                elem_id = f"sega_{tab}_{f.name}"
                if f.kind == "bool":
                    c = gr.Checkbox(value=f.default, label=f.label, elem_id=elem_id)
                elif f.kind == "text":
                    c = gr.Textbox(value=f.default, label=f.label, lines=3, elem_id=elem_id,
                                   placeholder="smiling, smile\n-glasses :: scale=4")
                elif f.kind == "float":
                    c = gr.Slider(minimum=f.minimum, maximum=f.maximum, step=f.step, value=f.default,
                                  label=f"{f.label} ({f.symbol})" if f.symbol else f.label, elem_id=elem_id)
                else:
                    c = gr.Textbox(value=f.format(f.default), label=f.label, elem_id=elem_id, max_lines=1)
                components.append(c)
        self.infotext_fields = [(c, f.infotext) for c, f in zip(components, FIELDS, strict=True) if f.infotext]
        self.infotext_fields.append((components[0], lambda d: "SEGA concepts" in d))
        self.paste_field_names = [f.infotext for f in FIELDS if f.infotext]
        return components

    def process(self, p, *args):
        try:
            sega_args = SegaArgs.from_values(args, max_concepts())
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
