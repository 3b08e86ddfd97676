"""backend/diffusion_engine/*.py: `p.sd_model` on Forge is a ForgeDiffusionEngine, not the
LDM itself. What the stand-in's engine keeps of it: `forge_objects` (the UnetPatcher at
`.unet`, whose `.model` is the KModel with the predictor), the copies processing resets it
from before every sampling pass (`forge_objects_original`,
`forge_objects_after_applying_lora`, `shallow_copy`), `get_learned_conditioning(prompts)`
(SD 1.x: a tensor; SDXL: {crossattn, vector}), `is_sdxl`, `latent_channels`. What it lacks,
as Forge's does: `cond_stage_model`, `cond_stage_model_empty_prompt`, `apply_model`.

It wraps a tests/tiny_models model (its UNet, text encoder and schedule). `model` stays for
the stand-in's processing (the inpainting checks read `conditioning_key`).

Forge's UNet (backend/nn/unet.py) keeps ldm's module names and calls every `attn2_patch`
(`fn(n, context, value, extra_options)` → the three, `extra_options` with `block`,
`block_index`, `n_heads`, `dim_head` and the call's `transformer_options` less the patches)
in `BasicTransformerBlock._forward` right before `attn2`. The tiny UNets are diffusers'
(or ldm-named in miniature): the network below shows their cross-attention layers under
ldm's names (`input_blocks.N.1.transformer_blocks.J.attn2`, N as ldm numbers the blocks)
and calls the patches from a forward pre-hook on each, with the ldm block. What a patch
hands back replaces the layer's input and context; the separate `value` is not mirrored
(diffusers' attention takes its values from the context)."""

import re

import torch

from backend.modules.k_model import KModel
from backend.modules.k_prediction import Prediction, PredictionDiscreteFlow, PredictionFlux
from backend.patcher.unet import UnetPatcher


class ForgeObjects:
    def __init__(self, unet, clip=None, vae=None):
        self.unet, self.clip, self.vae = unet, clip, vae

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae)


def _ldm_blocks(unet) -> dict:
    """{diffusers or miniature name of an attn2: (block kind, ldm block id, index)}."""
    out = {}
    for name, _ in unet.named_modules():
        m = re.fullmatch(r"(input|output)_blocks\.(\d+)\.attn2", name)
        if m:
            out[name] = (m.group(1), int(m.group(2)), 0)
        elif name == "middle_block.attn2":
            out[name] = ("middle", 0, 0)
    first = 1  # ldm's input block 0 is conv_in
    for i, down in enumerate(getattr(unet, "down_blocks", ())):
        for j, attn in enumerate(getattr(down, "attentions", None) or ()):
            for t in range(len(attn.transformer_blocks)):
                out[f"down_blocks.{i}.attentions.{j}.transformer_blocks.{t}.attn2"] = ("input", first + j, t)
        first += len(down.resnets) + (1 if down.downsamplers else 0)
    first = 0
    for i, up in enumerate(getattr(unet, "up_blocks", ())):
        for j, attn in enumerate(getattr(up, "attentions", None) or ()):
            for t in range(len(attn.transformer_blocks)):
                out[f"up_blocks.{i}.attentions.{j}.transformer_blocks.{t}.attn2"] = ("output", first + j, t)
        first += len(up.resnets)
    mid = getattr(unet, "mid_block", None)
    for j, attn in enumerate(getattr(mid, "attentions", None) or ()):
        for t in range(len(attn.transformer_blocks)):
            out[f"mid_block.attentions.{j}.transformer_blocks.{t}.attn2"] = ("middle", 0, t)
    return out


def _put(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, torch.nn.Module())
        root = getattr(root, part)
    root.add_module(last, module)


class _Network(torch.nn.Module):
    """The diffusion model's forward as Forge's UNet takes it (ldm argument names); its
    modules are the UNet's cross-attention layers under ldm's names."""

    def __init__(self, ldm):
        super().__init__()
        self.__dict__["ldm"] = ldm  # not a submodule: only the ldm-named layers are
        modules = dict(ldm.unet.named_modules())
        self.blocks = {}
        for name, key in _ldm_blocks(ldm.unet).items():
            kind, block, index = key
            prefix = "middle_block" if kind == "middle" else f"{kind}_blocks.{block}"
            _put(self, f"{prefix}.1.transformer_blocks.{index}.attn2", modules[name])
            self.blocks[modules[name]] = key

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, y=None, **kwargs):
        options = transformer_options or {}
        patches = options.get("patches", {}).get("attn2_patch", [])
        replace = options.get("patches_replace", {}).get("attn2", {})
        handles = []
        for module, key in self.blocks.items() if patches or replace else ():
            extra = {k: v for k, v in options.items() if k not in ("patches", "patches_replace")}
            extra.update(block=key[:2], block_index=key[2], n_heads=module.heads,
                         dim_head=module.to_q.out_features // module.heads)
            handles.append(module.register_forward_pre_hook(_patched(patches, extra), with_kwargs=True))
            fn = replace.get(key, replace.get(key[:2]))
            if fn is not None:
                handles.append(module.register_forward_hook(_replaced(fn, extra), with_kwargs=True))
        try:
            return self.ldm.unet(x, timesteps, encoder_hidden_states=context, class_labels=y).sample
        finally:
            for handle in handles:
                handle.remove()



def _context_name(kwargs) -> str:
    return "encoder_hidden_states" if "encoder_hidden_states" in kwargs else "context"


def _patched(patches, extra):
    """The attn2 patches, before the layer: what they hand back is what it computes with."""

    def hook(_module, args, kwargs):
        name = _context_name(kwargs)
        n, context = args[0], kwargs.get(name)
        value = context
        for patch in patches:
            n, context, value = patch(n, context, value, dict(extra))
        return (n, *args[1:]), {**kwargs, name: context}

    return hook


def _replaced(fn, extra):
    """A replacement of the attention (IP-Adapter's way): Forge calls it with the layer's
    q, k, v instead of the layer's forward; here its output takes the forward's place."""

    def hook(module, args, kwargs, output):
        n, context = args[0], kwargs.get(_context_name(kwargs))
        out = fn(module.to_q(n), module.to_k(context), module.to_v(context), dict(extra))
        return module.to_out(out)

    return hook


class ForgeEngine:
    def __init__(self, ldm):
        self.ldm = ldm
        kind = getattr(ldm, "kind", "sd1")
        predictor = Prediction(ldm.alphas_cumprod, "v_prediction" if kind == "v" else "epsilon")
        self.forge_objects_original = ForgeObjects(UnetPatcher(KModel(_Network(ldm), predictor)))
        self.forge_objects = self.forge_objects_original.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects_original.shallow_copy()
        self.is_sdxl = bool(getattr(ldm, "is_sdxl", False))
        self.is_sd1 = not self.is_sdxl
        self.latent_channels = 4
        self.model = ldm.model
        self.cond_stage_key = "txt"
        self.sd_checkpoint_info = getattr(ldm, "sd_checkpoint_info", None)
        # Forge's text processing engines (SD 1.x; SDXL's CLIP-L), where the model has a
        # tokenizer with the WebUI's face.
        cond_stage = getattr(ldm, "cond_stage_model", None)
        if hasattr(cond_stage, "tokenize_line"):
            self.text_processing_engine = cond_stage
        elif getattr(cond_stage, "embedders", None):
            self.text_processing_engine_l = cond_stage.embedders[0]

    def get_learned_conditioning(self, prompts):
        return self.ldm.get_learned_conditioning(prompts)

    def _transformer(self, ldm, network, predictor, seed: int) -> None:
        """An engine over a transformer (Flux, SD3): its objects, CLIP-L's and T5's text
        engines (T5 a fixed table of the tiny model's tokens)."""
        self.ldm, self.network = ldm, network
        self.forge_objects_original = ForgeObjects(UnetPatcher(KModel(network, predictor)))
        self.forge_objects = self.forge_objects_original.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects_original.shallow_copy()
        self.is_sdxl = self.is_sd1 = False
        self.latent_channels = 4
        self.model = ldm.model
        self.cond_stage_key = "txt"
        self.sd_checkpoint_info = None
        self.text_processing_engine_l = getattr(ldm, "cond_stage_model", None)
        self.text_processing_engine_t5 = T5Engine(ldm, self.WIDTH, seed=seed + 7)


class _Chunk:
    def __init__(self, tokens):
        self.tokens = tokens


class T5Engine:
    """backend/text_processing/t5_engine.py `T5TextProcessingEngine` as SEGA meets it:
    `tokenize_line(text)` → ([chunk of tokens…, end, padding… up to 256], token count) with no
    start token (`id_end` 1, `id_pad` 0), and the encoder's output one vector per token. The
    tokens are the tiny model's byte-level ones; the encoder is a fixed random table (channel
    0 flags a word: 1, against end and padding: 0, as QuadrantLDM's table does), so each
    token's vector sits at its own column."""

    id_end, id_pad, min_length = 1, 0, 256

    def __init__(self, ldm, width: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(1000, width, generator=g) * 0.5
        self.table[:, 0] = 1.0
        self.table[:2, 0] = 0.0
        self._chunks = ldm._chunks

    def tokenize_line(self, line):
        tokens = [t for chunk in self._chunks(line) for t in chunk] + [self.id_end]
        count = len(tokens)
        return [_Chunk(tokens + [self.id_pad] * max(0, self.min_length - count))], count

    def __call__(self, texts):
        rows = [torch.tensor(self.tokenize_line(text)[0][0].tokens) for text in texts]
        width = max(len(r) for r in rows)
        ids = torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=self.id_pad) for r in rows])
        return self.table[ids]


class FluxEngine(ForgeEngine):
    """backend/diffusion_engine/flux.py `Flux` (dev): a model beside the WebUI's own families
    (`is_webui_legacy_model()` False), flow prediction, conds {crossattn: T5's (256 tokens),
    vector: CLIP-L's pooled output, guidance: the prompt's distilled CFG scale, 3.5 unless it
    says otherwise}, `text_processing_engine_t5` beside `text_processing_engine_l`; the
    transformer is backend/nn/flux.py's layout in miniature (random weights, RMSNorm scales
    off 1), `network` picks another one (a test's crafted model)."""

    WIDTH = 32

    def __init__(self, ldm, seed: int = 0, network=None):
        from backend.nn.flux import IntegratedFluxTransformer2DModel

        torch.manual_seed(seed)
        if network is None:
            network = IntegratedFluxTransformer2DModel(in_channels=4, vec_in_dim=8, context_in_dim=self.WIDTH).eval()
            with torch.no_grad():
                for name, param in network.named_parameters():
                    if name.endswith(".scale"):
                        param.add_(0.1 * torch.randn_like(param))
        self._transformer(ldm, network, PredictionFlux(), seed)
        self.use_distilled_cfg_scale = True

    def is_webui_legacy_model(self):
        return False

    def get_learned_conditioning(self, prompts):
        pooled = self.ldm.get_learned_conditioning(list(prompts)).mean(dim=1)[:, :8]
        scale = getattr(prompts, "distilled_cfg_scale", None) or 3.5
        return {"crossattn": self.text_processing_engine_t5(list(prompts)), "vector": pooled,
                "guidance": torch.full((len(prompts),), float(scale))}


class SD3Engine(ForgeEngine):
    """backend/diffusion_engine/sd35.py `StableDiffusion3`: one of the WebUI's families
    (`is_sd3`, so `is_webui_legacy_model()`), `PredictionDiscreteFlow` (flow, timestep 1000·σ),
    text engines `text_processing_engine_l` / `_g` (CLIP's chunks, with start tokens) and
    `_t5`, conds {crossattn: [CLIP-L/G side by side, zero-padded to T5's width (77 per
    chunk); T5's 256 tokens, or zeros when `opts.sd3_enable_t5` is off] along the tokens,
    vector: the pooled outputs}; the network is backend/nn/mmditx.py in miniature."""

    WIDTH = 48

    def __init__(self, ldm, seed: int = 0):
        from backend.nn.mmditx import MMDiTX

        torch.manual_seed(seed)
        network = MMDiTX(in_channels=4, context_dim=self.WIDTH, adm_in_channels=8).eval()
        self._transformer(ldm, network, PredictionDiscreteFlow(), seed)
        self.text_processing_engine_g = self.text_processing_engine_l
        self.is_sd3 = True

    def is_webui_legacy_model(self):
        return True

    def get_learned_conditioning(self, prompts):
        from modules import shared

        prompts = list(prompts)
        lg = self.ldm.get_learned_conditioning(prompts)
        pooled = lg.mean(dim=1)[:, :8]
        lg = torch.nn.functional.pad(lg, (0, self.WIDTH - lg.shape[-1]))
        if getattr(shared.opts, "sd3_enable_t5", False):
            t5 = self.text_processing_engine_t5(prompts)
        else:
            t5 = torch.zeros((len(prompts), 256, self.WIDTH))
        return {"crossattn": torch.cat([lg, t5], dim=-2), "vector": pooled}
