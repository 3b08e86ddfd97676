"""Tiny random-weight Stable Diffusion parts built from configs (nothing is downloaded)."""

from __future__ import annotations

import torch


def byte_level_tokenizer():
    """A CLIP tokenizer whose vocabulary is every byte-level character, with no merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def text_encoder(seed: int = 0, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def unet(seed: int = 0, sample_size: int = 16, cross_attention_dim: int = 32, in_channels: int = 4, out_channels: int = 4,
         **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    ).eval()


def vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
    ).eval()


def ddim_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


class TinyLDM(torch.nn.Module):
    """A random-weight model with the face the WebUI's samplers see on `shared.sd_model`:
    `apply_model`, `alphas_cumprod`, `get_learned_conditioning` (75-token chunks, BREAK,
    every prompt of a batch padded to the same chunk count), `cond_stage_model_empty_prompt`.
    kind: "sd1" (tensor conds), "sdxl" (dict conds with a size-dependent `vector`), "v"
    (v-prediction) or "inpaint" (an inpainting checkpoint: 9 UNet input channels, the latent
    followed by `image_cond` = mask and masked image, conditioning_key "hybrid")."""

    VECTOR = 8

    def __init__(self, kind: str = "sd1", seed: int = 0, unet_model=None, hidden: int = 32, vector: int = 8):
        super().__init__()
        from types import SimpleNamespace

        self.kind = kind
        self.VECTOR = vector
        self.tokenizer = byte_level_tokenizer()
        self.text_encoder = text_encoder(seed=seed + 1, hidden=hidden)
        extra = {}
        if kind == "sdxl":
            extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=self.VECTOR)
        if kind == "inpaint":
            extra = dict(in_channels=9)
        self.unet = unet_model if unet_model is not None else unet(seed=seed + 2, sample_size=8, **extra)
        self.parameterization = "v" if kind == "v" else "eps"
        # The same float32 arithmetic as diffusers' "scaled_linear" schedule.
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))
        self.cond_stage_key = "txt"
        self.model = SimpleNamespace(conditioning_key="hybrid" if kind == "inpaint" else "crossattn")
        self.is_sdxl = kind == "sdxl"
        with torch.no_grad():
            self.register_buffer("cond_stage_model_empty_prompt", self._encode_chunks([[[]]]))

    def _chunks(self, text: str) -> list[list[int]]:
        chunks = []
        for part in text.split("BREAK"):
            ids = self.tokenizer(part.strip(), add_special_tokens=False).input_ids
            chunks.extend(ids[i : i + 75] for i in range(0, max(len(ids), 1), 75))
        return chunks or [[]]

    def _encode_chunks(self, chunk_lists):
        n = max(len(c) for c in chunk_lists)
        rows = []
        for chunks in chunk_lists:
            chunks = list(chunks) + [[]] * (n - len(chunks))
            ids = torch.tensor([[0] + c + [1] * (76 - len(c)) for c in chunks], device=self.text_encoder.device)
            rows.append(self.text_encoder(ids)[0].reshape(1, -1, self.text_encoder.config.hidden_size))
        return torch.cat(rows)

    def get_learned_conditioning(self, texts):
        crossattn = self._encode_chunks([self._chunks(t) for t in texts])
        if not self.is_sdxl:
            return crossattn
        width = getattr(texts, "width", None) or 1024
        height = getattr(texts, "height", None) or 1024
        pooled = crossattn.mean(dim=1)[:, : self.VECTOR - 2]
        pooled = torch.nn.functional.pad(pooled, (0, self.VECTOR - 2 - pooled.shape[1]))
        size = torch.tensor([[width / 1024, height / 1024]], device=crossattn.device).expand(len(texts), 2)
        return {"crossattn": crossattn, "vector": torch.cat([pooled, size], dim=1)}

    def apply_model(self, x, t, cond=None, **kwargs):
        if "c_crossattn" in cond:
            context, vector = cond["c_crossattn"][0], None
        else:
            context, vector = cond["crossattn"], cond["vector"]
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if self.model.conditioning_key == "hybrid":
            x = torch.cat([x, cond["c_concat"][0].to(x.dtype)], dim=1)
        dtype = self.unet.dtype  # the WebUI runs the UNet in its own dtype (fp16 on GPUs)
        if vector is not None:
            vector = vector.to(dtype)
        out = self.unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype), class_labels=vector).sample
        return out.to(x.dtype)


class TinySD3(TinyLDM):
    """A random-weight model with the face WebUI 1.10.1's SD3 Medium shows the samplers
    (modules/models/sd3/sd3_model.py `SD3Inferencer`): `get_learned_conditioning` returns
    {'crossattn': CLIP-L and CLIP-G features side by side, zero-padded to the T5 width, then
    the T5 features of the same token count — or zeros when `opts.sd3_enable_t5` is off —
    along the token axis, so twice the CLIP token count; 'vector': the two pooled outputs},
    16 latent channels, a flow-matching model (`apply_model` returns x − σ·v with the
    timestep 1000·σ) behind its own k-diffusion denoiser (`create_denoiser`),
    `add_noise_to_latent`, and `cond_stage_model_empty_prompt` = the crossattn of "" (two
    77-token halves). Widths are small stand-ins: CLIP-L 16, CLIP-G 24, T5 48 (the WebUI's
    768, 1280 and 4096)."""

    WIDTH = 48

    def __init__(self, seed: int = 0, t5: bool = True):
        torch.nn.Module.__init__(self)
        from types import SimpleNamespace

        import modules.models.sd3.sd3_model as sd3_model

        self.kind = "sd3"
        self.tokenizer = byte_level_tokenizer()
        self.clip_l = text_encoder(seed=seed + 1, hidden=16)
        self.clip_g = text_encoder(seed=seed + 3, hidden=24)
        self.t5 = text_encoder(seed=seed + 4, hidden=self.WIDTH) if t5 else None
        self.VECTOR = 16 + 24
        self.unet = unet(seed=seed + 2, sample_size=8, in_channels=16, out_channels=16,
                         cross_attention_dim=self.WIDTH, class_embed_type="projection",
                         projection_class_embeddings_input_dim=self.VECTOR)
        self.register_buffer("sigmas", sd3_model.flow_sigmas(3.0))
        self.register_buffer("alphas_cumprod", 1 / (self.sigmas ** 2 + 1))
        self._denoiser_class = sd3_model.SD3Denoiser
        self.parameterization = "eps"
        self.cond_stage_key = "txt"
        self.model = SimpleNamespace(conditioning_key="crossattn")
        self.is_sd3, self.is_sdxl = True, False
        self.latent_channels = 16
        with torch.no_grad():
            self.register_buffer("cond_stage_model_empty_prompt", self.get_learned_conditioning([""])["crossattn"])

    def _ids(self, chunk_lists):
        n = max(len(c) for c in chunk_lists)
        out = []
        for chunks in chunk_lists:
            chunks = list(chunks) + [[]] * (n - len(chunks))
            out.append(torch.tensor([[0] + c + [1] * (76 - len(c)) for c in chunks]))
        return out

    def get_learned_conditioning(self, texts):
        from modules import shared

        device = self.sigmas.device
        lg, pooled, t5 = [], [], []
        for ids in self._ids([self._chunks(t) for t in texts]):
            ids = ids.to(device)
            l_out, g_out = self.clip_l(ids)[0], self.clip_g(ids)[0]
            lg_row = torch.cat([l_out, g_out], dim=-1).reshape(1, -1, 40)
            lg.append(torch.nn.functional.pad(lg_row, (0, self.WIDTH - 40)))
            pooled.append(torch.cat([l_out[:, -1], g_out[:, -1]], dim=-1).mean(dim=0, keepdim=True))
            if self.t5 is not None and getattr(shared.opts, "sd3_enable_t5", False):
                t5.append(self.t5(ids)[0].reshape(1, -1, self.WIDTH))
            else:
                t5.append(torch.zeros_like(lg[-1]))
        lg, t5 = torch.cat(lg), torch.cat(t5)
        return {"crossattn": torch.cat([lg, t5], dim=-2), "vector": torch.cat(pooled)}

    def apply_model(self, x, t, cond=None, **kwargs):
        sigma = t if t.dim() else t.expand(x.shape[0])
        dtype = self.unet.dtype
        v = self.unet(x.to(dtype), sigma * 1000, encoder_hidden_states=cond["crossattn"].to(dtype),
                      class_labels=cond["vector"].to(dtype)).sample.to(x.dtype)
        return x - v * sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    def create_denoiser(self):
        return self._denoiser_class(self, self.sigmas)

    def add_noise_to_latent(self, x, noise, amount):
        return x * (1 - amount) + noise * amount
