"""ldm_patched/ldm/modules/diffusionmodules/openaimodel.py: `UNetModel.forward(x, timesteps,
context, y, control, transformer_options, **kwargs)` over the tiny model's diffusers UNet.

As reForge's `_forward`: the `WrappersMP.DIFFUSION_MODEL` wrappers run first;
`transformer_options` (the dict of this model call, mutated in place) gets `original_shape`
and `transformer_index` (0, then +1 after every transformer), and `block` =
("input" | "middle" | "output", ldm index) while a block runs. The diffusers blocks are
named by their ldm index: input block 1 + level·(layers + 1) + j, middle 0, output
up-level·(layers + 1) + j (the tiny UNet: input 1, middle 0, output 2 and 3); the
miniature ldm-named UNet (tests/tiny_models QuadrantUNet) by its own names. When an
`attn2_patch` is set, each transformer block's `attn2` gets a `forward` for this call that
applies the patches (attention.py) and is taken off afterwards; without patches the UNet
runs untouched. reForge's UNet keeps ldm's module names
(`input_blocks.N.1.transformer_blocks.J.attn2`): the layers are shown under those names too
(`ldm_names`), as an extension that looks a layer up by its block finds them there."""

import contextlib

import torch

from ldm_patched.ldm.modules.attention import patched_attn2_forward
from ldm_patched.modules import patcher_extension


def ldm_blocks(unet):
    """[(("input"|"middle"|"output", index), diffusers Transformer2DModel)] in call order
    (the miniature ldm UNet: its blocks, each a transformer of one `attn2`)."""
    if hasattr(unet, "input_blocks"):
        blocks = [(("input", i), b) for i, b in enumerate(unet.input_blocks)] + [(("middle", 0), unet.middle_block)]
        blocks += [(("output", i), b) for i, b in enumerate(unet.output_blocks)]
        return [(key, _OneBlock(b)) for key, b in blocks]
    if not hasattr(unet, "down_blocks"):
        return []
    per_level = unet.config.layers_per_block
    out = []
    for level, block in enumerate(unet.down_blocks):
        for j, t in enumerate(getattr(block, "attentions", None) or []):
            out.append((("input", 1 + level * (per_level + 1) + j), t))
    for t in getattr(unet.mid_block, "attentions", None) or []:
        out.append((("middle", 0), t))
    for level, block in enumerate(unet.up_blocks):
        for j, t in enumerate(getattr(block, "attentions", None) or []):
            out.append((("output", level * (per_level + 1) + j), t))
    return out


def _put(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, torch.nn.Module())
        root = getattr(root, part)
    root.add_module(last, module)


class _OneBlock:
    """A miniature block seen as a transformer of one block (its `attn2`)."""

    def __init__(self, block):
        self.transformer_blocks = [block]
        self.block = block

    def register_forward_pre_hook(self, hook, with_kwargs=False):
        return self.block.attn2.register_forward_pre_hook(hook, with_kwargs=with_kwargs)


class UNetModel(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.ldm_names = torch.nn.Module()
        for (kind, index), transformer in ldm_blocks(unet):
            for j, tb in enumerate(transformer.transformer_blocks):
                prefix = "middle_block" if kind == "middle" else f"{kind}_blocks.{index}"
                _put(self.ldm_names, f"{prefix}.1.transformer_blocks.{j}.attn2", tb.attn2)

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        wrappers = patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options)
        return patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        patches = transformer_options.get("patches", {}).get("attn2_patch", [])
        with self._patched(transformer_options, patches) if patches else contextlib.nullcontext():
            return self.unet(x, timesteps, encoder_hidden_states=context, class_labels=y).sample

    @contextlib.contextmanager
    def _patched(self, transformer_options, patches):
        handles, patched = [], []

        def enter(block, index):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                transformer_options["block"] = block
                transformer_options["transformer_index"] = index
                transformer_options["activations_shape"] = list(hidden.shape)
            return hook

        try:
            for index, (block, transformer) in enumerate(ldm_blocks(self.unet)):
                handles.append(transformer.register_forward_pre_hook(enter(block, index), with_kwargs=True))
                for k, tb in enumerate(transformer.transformer_blocks):
                    if getattr(tb, "attn2", None) is not None:
                        tb.attn2.forward = patched_attn2_forward(tb.attn2, k, transformer_options, patches)
                        patched.append(tb.attn2)
            yield
        finally:
            for h in handles:
                h.remove()
            for attn in patched:
                del attn.forward
