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

    def __init__(self, seed: int = 0, t5: bool = True, mmdit: bool = False):
        torch.nn.Module.__init__(self)
        from types import SimpleNamespace

        import modules.models.sd3.sd3_model as sd3_model

        self.kind = "sd3"
        self.tokenizer = byte_level_tokenizer()
        self.clip_l = text_encoder(seed=seed + 1, hidden=16)
        self.clip_g = text_encoder(seed=seed + 3, hidden=24)
        self.t5 = text_encoder(seed=seed + 4, hidden=self.WIDTH) if t5 else None
        self.VECTOR = 16 + 24
        self.mmdit = None
        if mmdit:  # the WebUI's own network: modules/models/sd3/mmdit.py's layout in miniature
            from modules.models.sd3.mmdit import MMDiT

            torch.manual_seed(seed + 2)
            self.mmdit = MMDiT(in_channels=16, context_dim=self.WIDTH, adm_in_channels=self.VECTOR).eval()
        else:
            self.unet = unet(seed=seed + 2, sample_size=8, in_channels=16, out_channels=16,
                             cross_attention_dim=self.WIDTH, class_embed_type="projection",
                             projection_class_embeddings_input_dim=self.VECTOR)
        self.register_buffer("sigmas", sd3_model.flow_sigmas(3.0))
        self.register_buffer("alphas_cumprod", 1 / (self.sigmas ** 2 + 1))
        self._denoiser_class = sd3_model.SD3Denoiser
        self.parameterization = "eps"
        self.cond_stage_key = "txt"
        self.model = SimpleNamespace(conditioning_key="crossattn")
        if mmdit:
            # The WebUI's SD3Cond: CLIP-L/G's chunks (model_lg, the WebUI's tokenize_line) and
            # T5's tokens of the same text (model_t5: no start token, end, padding to the CLIP
            # part's length); the T5 half of the cond follows model_t5's tokens.
            self.model.diffusion_model = self.mmdit
            self.cond_stage_model = SimpleNamespace(model_lg=StandInTokenizer(self), model_t5=_SD3T5Face(self))
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
        for text, ids in zip(texts, self._ids([self._chunks(t) for t in texts]), strict=True):
            ids = ids.to(device)
            l_out, g_out = self.clip_l(ids)[0], self.clip_g(ids)[0]
            lg_row = torch.cat([l_out, g_out], dim=-1).reshape(1, -1, 40)
            lg.append(torch.nn.functional.pad(lg_row, (0, self.WIDTH - 40)))
            pooled.append(torch.cat([l_out[:, -1], g_out[:, -1]], dim=-1).mean(dim=0, keepdim=True))
            if self.t5 is not None and getattr(shared.opts, "sd3_enable_t5", False):
                if self.mmdit is not None:
                    ids = self.cond_stage_model.model_t5.ids(text, ids.numel()).to(device)
                t5.append(self.t5(ids)[0].reshape(1, -1, self.WIDTH))
            else:
                t5.append(torch.zeros_like(lg[-1]))
        lg, t5 = torch.cat(lg), torch.cat(t5)
        return {"crossattn": torch.cat([lg, t5], dim=-2), "vector": torch.cat(pooled)}

    def apply_model(self, x, t, cond=None, **kwargs):
        sigma = t if t.dim() else t.expand(x.shape[0])
        if self.mmdit is not None:
            v = self.mmdit(x, sigma * 1000, y=cond["vector"].to(x.dtype), context=cond["crossattn"].to(x.dtype))
            return x - v * sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        dtype = self.unet.dtype
        v = self.unet(x.to(dtype), sigma * 1000, encoder_hidden_states=cond["crossattn"].to(dtype),
                      class_labels=cond["vector"].to(dtype)).sample.to(x.dtype)
        return x - v * sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    def create_denoiser(self):
        return self._denoiser_class(self, self.sigmas)

    def add_noise_to_latent(self, x, noise, amount):
        return x * (1 - amount) + noise * amount


class _SD3T5Face:
    """The WebUI's Sd3T5 as the masks read it: `tokenize_line(line, target_token_count=n)` →
    (the text's tokens, end, padding — cut or padded to n), `id_end`, `t5xxl` (None when the
    checkpoint has no T5). Token ids are TinySD3's byte-level ones."""

    id_end, id_pad = 1, 0

    def __init__(self, sd3):
        self._sd3 = sd3
        self.t5xxl = sd3.t5

    def tokenize_line(self, line, *, target_token_count=None):
        tokens = [t for chunk in self._sd3._chunks(line) for t in chunk] + [self.id_end]
        if target_token_count is not None:
            tokens = (tokens + [self.id_pad] * target_token_count)[:target_token_count]
        return tokens, [1.0] * len(tokens)

    def ids(self, line, count):
        """[count / 77, 77]: the tokens as TinySD3's T5 stand-in (77 positions) encodes them."""
        return torch.tensor(self.tokenize_line(line, target_token_count=count)[0]).view(-1, 77)


# ---- the WebUI's tokenizer face and attention at latent/4 (implicit masks) -------------------


class _Chunk:
    def __init__(self, tokens):
        self.tokens = tokens


class StandInTokenizer:
    """The part of the WebUI's FrozenCLIPEmbedderWithCustomWords that the masks read:
    `tokenize_line(text)` → (chunks of [start, 75 tokens padded with end, end], token count)
    and `id_end`, over TinyLDM's own chunking (so tokens sit where its conds put them)."""

    id_start, id_end = 0, 1

    def __init__(self, ldm):
        self._chunks = ldm._chunks

    def tokenize_line(self, line):
        chunks = self._chunks(line)
        return [_Chunk([0, *c] + [1] * (76 - len(c))) for c in chunks], sum(len(c) for c in chunks)


def quarter_unet(seed: int = 0, in_channels: int = 4, **extra):
    """A diffusers UNet whose cross-attention sits on the latent/4 grid (two downsamplings
    first), in a down block, the middle block (same grid, as in SDXL) and an up block."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(16, 16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
        **extra,
    ).eval()


def attention_ldm(kind: str = "sd1", seed: int = 0) -> TinyLDM:
    """TinyLDM with `quarter_unet` and the WebUI's tokenizer face: SD 1.x keeps it on
    `cond_stage_model`, SDXL on the conditioner's first embedder."""
    from types import SimpleNamespace

    extra = {}
    if kind == "sdxl":
        extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=TinyLDM.VECTOR)
    if kind == "inpaint":
        extra = dict(in_channels=9)
    ldm = TinyLDM(kind, seed=seed, unet_model=quarter_unet(seed=seed + 2, **extra))
    tokenizer = StandInTokenizer(ldm)
    ldm.cond_stage_model = SimpleNamespace(embedders=[tokenizer]) if kind == "sdxl" else tokenizer
    return ldm


class LdmCrossAttention(torch.nn.Module):
    """Stand-in of ldm's (and sgm's) CrossAttention: to_q/to_k/to_v/to_out, heads, scale and
    forward(x, context=None, mask=None). The WebUI's attention optimisations replace
    `forward` on this class; `OPTIMISATIONS` are three of them in miniature."""

    def __init__(self, query_dim, context_dim, heads=2, dim_head=8):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = torch.nn.Linear(query_dim, inner, bias=False)
        self.to_k = torch.nn.Linear(context_dim, inner, bias=False)
        self.to_v = torch.nn.Linear(context_dim, inner, bias=False)
        self.to_out = torch.nn.Sequential(torch.nn.Linear(inner, query_dim), torch.nn.Dropout(0.0))

    def forward(self, x, context=None, mask=None):
        return plain_forward(self, x, context, mask)


def _heads(t, h):
    return t.view(t.shape[0], t.shape[1], h, -1).transpose(1, 2)


def _merge(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def plain_forward(self, x, context=None, mask=None):
    """ldm's own: the probabilities materialised (and kept, for the tests, in `last_probs`)."""
    context = x if context is None else context
    q, k, v = (_heads(t, self.heads) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    probs = (q @ k.transpose(-1, -2) * self.scale).softmax(-1)
    self.last_probs = probs
    return self.to_out(_merge(probs @ v))


def sdp_forward(self, x, context=None, mask=None):
    """Like the WebUI's sdp: torch's fused attention, no probabilities."""
    context = x if context is None else context
    q, k, v = (_heads(t, self.heads) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    return self.to_out(_merge(torch.nn.functional.scaled_dot_product_attention(q, k, v)))


def split_forward(self, x, context=None, mask=None):
    """Like the WebUI's split (Doggettx) and sub-quadratic ones: queries in slices."""
    context = x if context is None else context
    q, k, v = (_heads(t, self.heads) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    out = torch.cat([(s @ k.transpose(-1, -2) * self.scale).softmax(-1) @ v for s in q.split(3, dim=2)], dim=2)
    return self.to_out(_merge(out))


OPTIMISATIONS = {"plain": plain_forward, "sdp": sdp_forward, "split": split_forward}


class _Block(torch.nn.Module):
    def __init__(self, dim, context_dim):
        super().__init__()
        self.attn2 = LdmCrossAttention(dim, context_dim)


class QuadrantUNet(torch.nn.Module):
    """An ldm-named UNet in miniature whose concept words are attended to in one quadrant.

    Each latent/4 cell's output depends only on its own 4 × 4 latent block and on the
    context through cross-attention, so a change in one block stays in that block. Token
    embeddings carry a flag (channel 0: 1 for a word, 0 for start/end/padding, see
    `QuadrantLDM`); the down block's queries look for that flag only in the top-left
    quadrant, so there the words take almost all attention and elsewhere none stands out.
    The up block's queries are zero (uniform attention everywhere); the middle block looks
    for the words in the opposite quadrant — it must not count (LEDITS++ leaves it out)."""

    def __init__(self, context_dim=32, dim=16, grid=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.grid = grid
        self.proj_in = torch.nn.Linear(4, dim)
        self.input_blocks = torch.nn.ModuleList([_Block(dim, context_dim)])
        self.middle_block = _Block(dim, context_dim)
        self.output_blocks = torch.nn.ModuleList([_Block(dim, context_dim)])
        self.proj_out = torch.nn.Linear(dim, 4)
        pos = torch.zeros(grid, grid, dim)
        pos[: grid // 2, : grid // 2, 0] = 1.0  # the quadrant
        pos[grid // 2 :, grid // 2 :, 1] = 1.0  # the opposite one, for the middle block
        self.register_buffer("pos", pos.view(grid * grid, dim))
        with torch.no_grad():
            self.proj_in.weight[:2] = 0.0
            self.proj_in.bias[:2] = 0.0
            for block, channel in ((self.input_blocks[0], 0), (self.middle_block, 1)):
                attn = block.attn2
                attn.to_q.weight.zero_()
                attn.to_k.weight.zero_()
                attn.to_q.weight[:, channel] = 8.0
                attn.to_k.weight[:, 0] = 8.0
            self.output_blocks[0].attn2.to_q.weight.zero_()

    @property
    def dtype(self):
        return self.proj_in.weight.dtype

    def forward(self, sample, timestep, encoder_hidden_states=None, class_labels=None):
        from types import SimpleNamespace

        n, _, h, w = sample.shape
        pooled = torch.nn.functional.avg_pool2d(sample, 4)
        hidden = self.proj_in(pooled.flatten(2).transpose(1, 2)) + self.pos
        context = encoder_hidden_states
        a = self.input_blocks[0].attn2(hidden, context=context)
        m = self.middle_block.attn2(hidden + a, context=context)
        o = self.output_blocks[0].attn2(hidden + a + m, context=context)
        out = self.proj_out(a + m + o).transpose(1, 2).reshape(n, 4, h // 4, w // 4)
        return SimpleNamespace(sample=0.1 * sample + torch.nn.functional.interpolate(out, scale_factor=4.0))


class QuadrantLDM(TinyLDM):
    """TinyLDM over `QuadrantUNet`, with token embeddings from a fixed table whose channel 0
    flags words (1) against start, end and padding tokens (0). Latents must be 16 × 16."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(1000, 32, generator=g) * 0.5
        table[:, 0] = 1.0
        table[:2, 0] = 0.0
        self._table = table
        super().__init__("sd1", seed=seed, unet_model=QuadrantUNet(seed=seed))
        self.cond_stage_model = StandInTokenizer(self)

    def _encode_chunks(self, chunk_lists):
        n = max(len(c) for c in chunk_lists)
        rows = []
        for chunks in chunk_lists:
            chunks = list(chunks) + [[]] * (n - len(chunks))
            ids = torch.tensor([[0] + c + [1] * (76 - len(c)) for c in chunks])
            rows.append(self._table[ids].reshape(1, -1, 32))
        return torch.cat(rows)


class TinyFlow(torch.nn.Module):
    """A random-weight flow-matching model (velocity out) with the call face of Flux in ComfyUI:
    `(x, timestep = σ, context, y, guidance, control, transformer_options)`. Each latent pixel
    attends to the context's tokens, so the prompt changes the output where it attends, and
    the distilled `guidance` value enters with the timestep."""

    def __init__(self, seed: int = 0, channels: int = 4, context_dim: int = 32, width: int = 16):
        super().__init__()
        self.width = width
        self.inp = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.ctx = torch.nn.Linear(context_dim, width)
        self.emb = torch.nn.Linear(2, width)
        self.mid = torch.nn.Conv2d(width, width, 3, padding=1)
        self.out = torch.nn.Conv2d(width, channels, 3, padding=1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)

    @property
    def dtype(self):
        return self.out.weight.dtype

    def forward(self, x, timestep, context=None, y=None, guidance=None, control=None, transformer_options={},  # noqa: B006
                **kwargs):
        g = guidance if guidance is not None else torch.zeros_like(timestep)
        emb = self.emb(torch.stack([timestep.to(x.dtype), g.to(x.dtype)], dim=-1))
        h = self.inp(x)
        keys = self.ctx(context.to(x.dtype))
        attn = torch.softmax(torch.einsum("bchw,btc->bhwt", h, keys) / self.width**0.5, dim=-1)
        h = h + torch.einsum("bhwt,btc->bchw", attn, keys) + emb[..., None, None]
        return self.out(torch.tanh(self.mid(torch.tanh(h))))
