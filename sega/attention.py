"""The concept rows' cross-attention inside a host's model call, for LEDITS++'s M¹
(sega/masks.py). Plain torch; the host hands in its model and tokenizer: the WebUI family
(sega_webui/attention.py adds what only it has) and ComfyUI (sega_comfy/masks.py) read the
same layers with the same classes.

Layers. The UNet's cross-attention layers (`attn2`) whose query grid is the latent/4 grid,
in the down and up blocks, not the middle block — as diffusers' LEDITS++ takes them:
SD 1.x/2.x at 512²: input blocks 7–8 and output blocks 3–5 (16 × 16, 5 layers); SDXL at
1024²: input blocks 7–8 and output blocks 0–2 (32 × 32, 10 transformer blocks each, 50
layers; its middle block sits on the same grid and is left out, as the pipeline's
`from_where=["up", "down"]` leaves it out).

Recomputing. The WebUI's optimised attention (sdp, xformers, sub-quadratic, split,
InvokeAI — all set as `forward` on the CrossAttention class) never forms the attention
probabilities. A forward hook (`register_forward_hook`, which leaves `forward` alone, so
compat.py does not take it for another extension's) reads the layer's input and context
and recomputes softmax(q·kᵀ·scale) with the layer's own `to_q`/`to_k` for the concept rows
only, in float32, summed over heads and over each concept's own token columns; the
prompt's rows are never touched. A model call may be cut into several (the host's chunked
evaluation, or SEGA's own separate call), so each layer counts the rows it has seen to
know which of them are concept rows.

The hooks are put on once per pass, armed for one model call at a time, and taken off at
the end of the pass, batch or generation and when SEGA stops; hooks left behind by a
generation that died are found by their mark and removed before new ones go on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from sega.masks import attention_grid

HOOK_MARK = "_sega_concept_attention"
CHUNK = 77  # tokens per chunk of the WebUI's conds: start, 75 tokens, end
EARLY_TIMESTEP = 800


class MaskError(RuntimeError):
    """The model cannot give the masks what they need; the message says what, for the user."""


def attention_layers(model) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of the cross-attention layers of the down and up blocks."""
    root = getattr(getattr(model, "model", None), "diffusion_model", None) or model
    out = []
    for name, module in root.named_modules():
        parts = name.split(".")
        if parts[-1] != "attn2" or "middle_block" in parts or "mid_block" in parts:
            continue
        if all(hasattr(module, a) for a in ("to_q", "to_k", "heads", "scale")):
            out.append((name, module))
    return out


def remove_stale_hooks(module: torch.nn.Module) -> None:
    for key, hook in list(module._forward_hooks.items()):
        if getattr(hook, HOOK_MARK, False):
            del module._forward_hooks[key]
            getattr(module, "_forward_hooks_with_kwargs", {}).pop(key, None)


def token_positions(tokenizer, text: str) -> list[int]:
    """Columns of `text`'s own tokens in its cond (no start, end or padding tokens), from
    the host's `tokenize_line`: each chunk is [start, tokens…, end-padding…, end] (CLIP) or
    [tokens…, end, padding…] (Forge's T5 engine, which has no start token)."""
    chunks, _ = tokenizer.tokenize_line(text)
    start_id = getattr(tokenizer, "id_start", None)
    end = getattr(tokenizer, "id_end", None)
    positions = []
    for c, chunk in enumerate(chunks):
        tokens = list(chunk.tokens)
        first = 1 if start_id is not None and tokens[:1] == [start_id] else 0
        last = len(tokens) - 1 if first else len(tokens)  # CLIP's chunk always ends with its end token
        stop = first
        while stop < last and tokens[stop] != end:
            stop += 1
        positions.extend(c * len(tokens) + i for i in range(first, stop))
    return positions


def find_tokenizer(model):
    """The object with the WebUI's `tokenize_line`: the cond stage model (SD 1.x/2.x) or,
    for SDXL's conditioner, its first text embedder that has one."""
    # Forge's engines keep theirs as text processing engines (SDXL: the CLIP-L one; both
    # of its encoders cut the prompt alike).
    for name in ("text_processing_engine", "text_processing_engine_l"):
        if hasattr(getattr(model, name, None), "tokenize_line"):
            return getattr(model, name)
    cond_stage = getattr(model, "cond_stage_model", None)
    if hasattr(cond_stage, "tokenize_line"):
        return cond_stage
    for embedder in getattr(cond_stage, "embedders", None) or ():
        if hasattr(embedder, "tokenize_line"):
            return embedder
    raise MaskError("the mask needs the WebUI's tokenizer (tokenize_line) to find the concepts' words, "
                    "and this model has none")


@dataclass
class _Call:
    """One armed model call: which of the rows the layers see are concept rows."""

    start: int
    rows: int
    positions: int  # h·w of the latent/4 grid
    columns: torch.Tensor  # [rows, L] float32: 1 at each row's own token columns
    seen: dict = field(default_factory=dict)  # layer → rows seen so far
    heads: dict = field(default_factory=dict)  # layer → its head count, once it saw concept rows
    covered: dict = field(default_factory=dict)  # layer → concept rows it saw
    total: torch.Tensor | None = None  # [rows, h·w]
    by_length: dict = field(default_factory=dict)

    def columns_for(self, length: int) -> torch.Tensor:
        """The token columns for a context of `length` tokens: ControlNet's mark token in
        front (length ≡ 1 mod 77, when the UNet still sees it), padding chunks behind."""
        cached = self.by_length.get(length)
        if cached is None:
            lead = length % CHUNK if length % CHUNK in (0, 1) else 0
            base = self.columns[:, : max(0, length - lead)]
            cached = torch.nn.functional.pad(base, (lead, length - lead - base.shape[1]))
            self.by_length[length] = cached
        return cached


class ConceptAttention:
    """One pass's hooks on the latent/4 cross-attention layers of a model."""

    def __init__(self, model, key_context=None):
        self.layers = attention_layers(model)
        self.key_context = key_context
        self.handles: list = []
        self.call: _Call | None = None

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return attention_grid(height, width)

    def tokenizer(self, sd_model):
        return find_tokenizer(sd_model)

    def install(self) -> None:
        if self.handles:
            return

        def hook(module, args, kwargs, output):
            if self.call is not None:
                self._observe(module, args, kwargs)

        setattr(hook, HOOK_MARK, True)
        for _, module in self.layers:
            remove_stale_hooks(module)
            self.handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        self.call = None
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def arm(self, start: int, rows: int, grid: tuple[int, int], columns: torch.Tensor) -> None:
        """Watch the next model call(s): concept rows are rows start … start+rows−1 of the
        rows the layers see from now on; `columns` [rows, L] their token columns."""
        self.install()
        self.call = _Call(start, rows, grid[0] * grid[1], columns)

    def disarm(self) -> None:
        self.call = None

    def collect(self, grid: tuple[int, int]) -> torch.Tensor:
        """The armed call's maps [rows, h, w]: attention to each row's own tokens, averaged
        over the heads of every layer on the grid."""
        call, self.call = self.call, None
        if call is None or not call.heads:
            raise MaskError(
                f"the mask needs the UNet's cross-attention layers on the {grid[0]}×{grid[1]} grid (latent/4), "
                "and none saw the concept rows (does another extension tile the latent or replace the UNet?)"
            )
        short = [n for n, m in self.layers if m in call.covered and call.covered[m] != call.rows]
        if short:
            raise MaskError(f"layer {short[0]} saw {call.covered[dict(self.layers)[short[0]]]} of {call.rows} concept rows")
        return (call.total / float(sum(call.heads.values()))).view(call.rows, *grid)

    def _observe(self, module, args, kwargs) -> None:
        x = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
        context = kwargs.get("context", kwargs.get("encoder_hidden_states"))
        if context is None and len(args) > 1:
            context = args[1]
        if x is not None and context is not None:
            self.observe(module, x, context)

    def observe(self, module, x: torch.Tensor, context: torch.Tensor) -> None:
        """`module`'s query input `x` and context for the rows the armed call sees next."""
        call = self.call
        offset = call.seen.get(module, 0)
        call.seen[module] = offset + x.shape[0]
        if x.shape[1] != call.positions:
            return
        lo, hi = max(offset, call.start), min(offset + x.shape[0], call.start + call.rows)
        if lo >= hi:
            return
        self._add(module, x[lo - offset : hi - offset], context[lo - offset : hi - offset], lo - call.start)

    def _add(self, module, x: torch.Tensor, context: torch.Tensor, at: int) -> None:
        """Add the attention of these rows, concept rows `at`… of the armed call."""
        call = self.call
        with torch.no_grad():
            summed = concept_attention(module, x, context, call.columns_for(context.shape[1])[at : at + x.shape[0]],
                                       self.key_context)
        if call.total is None:
            call.total = summed.new_zeros((call.rows, call.positions))
        call.total[at : at + x.shape[0]] += summed
        call.heads[module] = module.heads
        call.covered[module] = call.covered.get(module, 0) + x.shape[0]


# ldm's names, which Forge's and reForge's UNets keep: input_blocks.7.1.transformer_blocks.0.attn2
_LDM_ATTN2 = re.compile(r"(?:^|\.)(input|output)_blocks\.(\d+)\.(?:\d+\.)?(?:transformer_blocks\.(\d+)\.)?attn2$")


def ldm_attention_layers(diffusion_model) -> dict:
    """{(block kind, block id, index in its transformer): attn2} of the down and up blocks,
    keyed as the ComfyUI-style hosts name a transformer block to its patches."""
    out = {}
    # Every name a layer has (a host may show one layer under more than one).
    for name, module in diffusion_model.named_modules(remove_duplicate=False):
        m = _LDM_ATTN2.search(name)
        if m and all(hasattr(module, a) for a in ("to_q", "to_k", "heads")):
            out[(m.group(1), int(m.group(2)), int(m.group(3) or 0))] = module
    return out


class PatchedAttention(ConceptAttention):
    """The same reading through the host's `attn2_patch` (Forge, reForge: forge-contract.md
    §4) instead of forward hooks: those hosts call the patch with the normalised hidden
    states and the context right before `attn2` — also when another patch (IP-Adapter)
    replaces the attention itself, which a forward hook would never see. The patch only
    observes: it hands back what it was given. The layer comes from the block the host
    names in `extra_options`, its `to_q`/`to_k` are called as the host calls them (never
    its weights read: Forge may keep them offloaded or quantised)."""

    def __init__(self, diffusion_model):
        self.first_list = None  # reForge: the cond list of the first concept, see arm_lists
        self.by_block = ldm_attention_layers(diffusion_model)
        self.layers = [(f"{kind}_blocks.{i}.transformer_blocks.{j}.attn2", m) for (kind, i, j), m in self.by_block.items()]
        self.key_context = None  # these hosts have no hypernetworks inside the attention
        self.handles = []
        self.call = None

    def install(self) -> None:
        pass

    def remove(self) -> None:
        self.call = None

    def options(self, model_options: dict) -> dict:
        """The call's model options with this reading's patch last among the attn2 patches
        (so it sees what the attention sees); the pass's own options stay as they are."""
        transformer = dict(model_options.get("transformer_options", {}))
        patches = dict(transformer.get("patches", {}))
        patches["attn2_patch"] = [*patches.get("attn2_patch", []), self.patch]
        transformer["patches"] = patches
        return {**model_options, "transformer_options": transformer}

    def arm(self, start: int, rows: int, grid: tuple[int, int], columns: torch.Tensor) -> None:
        self.first_list = None
        super().arm(start, rows, grid, columns)

    def arm_lists(self, first_list: int, rows: int, grid: tuple[int, int], columns: torch.Tensor) -> None:
        """Watch a call that batches several cond lists (reForge's calc_cond_batch): the
        concepts are lists first_list, first_list + 1, …, B rows each. The host packs the
        lists into calls in its own order and says which list each B-row chunk is of
        (`cond_or_uncond`), so rows are found by that, not counted."""
        super().arm(0, rows, grid, columns)
        self.first_list = first_list

    def patch(self, n, context, value, extra_options):
        if self.call is not None and context is not None and n.shape[1] == self.call.positions:
            block = extra_options.get("block") or ("", -1)
            module = self.by_block.get((block[0], block[1], extra_options.get("block_index", 0)))
            if module is not None:
                if self.first_list is None:
                    self.observe(module, n, context)
                else:
                    self._observe_lists(module, n, context, extra_options.get("cond_or_uncond") or ())
        return n, context, value

    def _observe_lists(self, module, n, context, lists) -> None:
        if not lists or n.shape[0] % len(lists):
            return
        b = n.shape[0] // len(lists)
        for j, index in enumerate(lists):
            slot = index - self.first_list
            if 0 <= slot and (slot + 1) * b <= self.call.rows:
                self._add(module, n[j * b : (j + 1) * b], context[j * b : (j + 1) * b], slot * b)


def concept_attention(module, x, context, columns, key_context=None) -> torch.Tensor:
    """softmax(q·kᵀ·scale) of `module` for these rows, summed over heads and over the
    token columns weighted by `columns` [rows, T]: [rows, queries], float32."""
    norm_cross = getattr(module, "norm_cross", None)
    if norm_cross:  # diffusers' Attention may normalise the context first
        context = module.norm_encoder_hidden_states(context)
    keys_from = key_context(context) if key_context is not None else context
    q = module.to_q(x)
    k = module.to_k(keys_from)
    rows, queries, inner = q.shape
    heads = module.heads
    q = q.view(rows, queries, heads, inner // heads).transpose(1, 2).float()
    k = k.view(rows, k.shape[1], heads, inner // heads).transpose(1, 2).float()
    # Forge's and reForge's layers keep no `scale`: theirs is the usual 1/√d.
    scale = getattr(module, "scale", None) or (inner // heads) ** -0.5
    probs = torch.matmul(q, k.transpose(-1, -2)).mul_(float(scale)).softmax(dim=-1)
    return torch.einsum("rhqt,rt->rq", probs, columns.to(probs.device, torch.float32))


def early_rows(sigma: torch.Tensor, eps_space: bool, alphas_cumprod: torch.Tensor | None,
               flow: bool = False) -> torch.Tensor | None:
    """[B] bool: rows above timestep 800 of 1000, where LEDITS++'s "intersect" uses M¹
    alone. `sigma` is the timestep on the ε path, else k-diffusion's σ, compared with the
    σ of timestep 800 from the model's schedule — on a flow model (SD3, Flux), whose
    timestep is 1000·σ, with 0.8. Stays on the device."""
    if flow:
        return sigma > EARLY_TIMESTEP / 1000
    if eps_space:
        return sigma > EARLY_TIMESTEP
    if alphas_cumprod is None or alphas_cumprod.shape[0] <= EARLY_TIMESTEP:
        return None
    a = alphas_cumprod[EARLY_TIMESTEP].to(device=sigma.device, dtype=torch.float32)
    return sigma.to(torch.float32) > ((1 - a) / a).sqrt()


def token_columns(tokenizer, texts, phase, active, batch: int, length: int, device) -> torch.Tensor:
    """[K·B, length] float32 (concept-major, B rows each): 1 at each active concept's own
    token columns. `tokenizer`: one with `tokenize_line`, or a function text → columns.
    `phase[i]`: the schedule entry concept i is in, or None when its texts do not line up
    with its entries (another extension made the schedule), then the columns of any of its
    texts."""
    positions = (lambda text: token_positions(tokenizer, text)) if hasattr(tokenizer, "tokenize_line") else tokenizer
    out = torch.zeros((len(active), length))
    for row, i in enumerate(active):
        chosen = texts[i] if phase[i] is None else [texts[i][phase[i]]]
        for text in chosen:
            columns = [c for c in positions(text) if c < length]
            out[row, columns] = 1.0
    return out.repeat_interleave(batch, dim=0).to(device)
