"""The concept rows' attention inside an MMDiT's joint attention, for LEDITS++'s M¹
(sega/masks.py) on a model with no cross-attention layers: Flux (Black Forest Labs' layout,
which Forge's backend/nn/flux.py and ComfyUI's comfy/ldm/flux keep) and SD3 (the WebUI's
modules/models/sd3/mmdit.py, ComfyUI's comfy/ldm/modules/diffusionmodules/mmdit.py). Host-
free; which words a concept has in the context is the host's to say (sega_webui/
joint_attention.py, sega_comfy/patch.py).

What M¹ is there. In a double-stream block (Flux) or joint block (SD3) text and image tokens
are projected apart and then attend jointly: softmax over the keys of [text; image] of
q·kᵀ/√d (Flux: after RoPE; SD3 adds its positions to the patches instead). The
image-query × concept-token block of those probabilities is what a UNet's cross-attention
probabilities are to LEDITS++: the share of each image position's attention that goes to
the concept's words (here a share of all keys, text and image, as the model computes it).
No attention implementation forms these probabilities, so they are recomputed for the
concept rows only, in float32, from the block's own normalised q and k (read with forward
hooks on the q/k norms — Flux: `img_attn.norm` and `txt_attn.norm`; SD3: `ln_q` and `ln_k`
of the context and image blocks, identities in SD3 Medium but modules all the same — which
leave every module's `forward` alone) and, on Flux, the block's own RoPE (the host's
`apply_rope`, from the block's module, with the `pe` the block was called with), summed over
heads and over each concept's token columns, in chunks of queries so that a 1024² image's
[queries × keys] never sits in memory whole.

Which blocks. LEDITS++ reads the UNet's cross-attention on its coarsest grid in the down and
up paths — the middle of the network by depth — and leaves out the outer, fine levels. A
DiT keeps one grid through every block, so the choice is by depth alone: the middle half of
the blocks where text and image are projected apart (Flux dev and schnell: double-stream
blocks 4–13 of 19; SD3 Medium: joint blocks 6–17 of 24). Flux's single-stream blocks are
left out: text and image share one projection there. The maps live on the transformer's
2 × 2 patch grid (latent/2, finer than a UNet's latent/4); M¹'s smoothing and quantile are
taken on that grid, then it is upsampled to the latent as on UNets.

The hooks go on when a model call is armed and come off when its maps are read (or the call
is disarmed). A call may hold other rows than the concepts' (the WebUI's widened call) or
be split (the host's chunking), so each block counts the rows it has seen.
"""

from __future__ import annotations

import sys

import torch

from sega.attention import MaskError

HOOK_MARK = "_sega_joint_attention"
QUERY_CHUNK_ELEMENTS = 1 << 24  # scores held at once per chunk: 64 MiB of float32


class Layout:
    """Where a family of MMDiTs keeps what the masks read."""

    name = ""
    rope = False

    def blocks(self, diffusion_model) -> list[torch.nn.Module]:
        raise NotImplementedError

    def norms(self, block) -> dict:
        """{module: role}: modules whose forward output the reading needs."""
        raise NotImplementedError

    def text_offset(self, diffusion_model) -> int:
        """Tokens in front of the text in the keys (SD3's register tokens)."""
        return 0


class FluxLayout(Layout):
    """Black Forest Labs' layout (Forge's backend/nn/flux.py): `double_blocks`, whose
    `img_attn.norm` / `txt_attn.norm` (QKNorm) return (q, k) as [B, heads, L, head_dim];
    the block is called with `pe` (RoPE) and applies it inside the attention."""

    name, rope = "flux", True

    def blocks(self, diffusion_model):
        blocks = getattr(diffusion_model, "double_blocks", None)
        if not isinstance(blocks, torch.nn.ModuleList) or not all(
                isinstance(getattr(getattr(b, side, None), "norm", None), torch.nn.Module)
                for b in blocks for side in ("img_attn", "txt_attn")):
            return []
        return list(blocks)

    def norms(self, block):
        return {block.img_attn.norm: "img", block.txt_attn.norm: "txt"}


class SD3Layout(Layout):
    """The WebUI's SD3 MMDiT (modules/models/sd3/mmdit.py): `joint_blocks`, each with a
    `context_block` and an `x_block` whose `attn.ln_q` / `attn.ln_k` return q or k as
    [B, L, heads, head_dim]; no RoPE; `register_length` register tokens before the text."""

    name = "sd3"

    def blocks(self, diffusion_model):
        blocks = getattr(diffusion_model, "joint_blocks", None)
        if not isinstance(blocks, torch.nn.ModuleList) or not all(
                isinstance(getattr(getattr(getattr(b, side, None), "attn", None), ln, None), torch.nn.Module)
                for b in blocks for side in ("context_block", "x_block") for ln in ("ln_q", "ln_k")):
            return []
        return list(blocks)

    def norms(self, block):
        return {block.context_block.attn.ln_q: "q_txt", block.context_block.attn.ln_k: "k_txt",
                block.x_block.attn.ln_q: "q_img", block.x_block.attn.ln_k: "k_img"}

    def text_offset(self, diffusion_model):
        return int(getattr(diffusion_model, "register_length", 0) or 0)


LAYOUTS = (FluxLayout(), SD3Layout())


def find_layout(diffusion_model):
    """(layout, its blocks) of a model, or (None, [])."""
    for layout in LAYOUTS:
        blocks = layout.blocks(diffusion_model)
        if blocks:
            return layout, blocks
    return None, []


def observed_blocks(blocks: list) -> list:
    """The middle half of the blocks by depth (at least one)."""
    n = len(blocks)
    return blocks[n // 4 : max(n // 4 + 1, (3 * n) // 4)]


def patch_grid(height: int, width: int) -> tuple[int, int]:
    """The 2 × 2 patch grid of a latent (odd sizes padded up, as the model pads them)."""
    return (height + 1) // 2, (width + 1) // 2


def joint_concept_attention(q_txt, q_img, k_txt, k_img, rope, columns) -> torch.Tensor:
    """softmax over [text; image] keys of q·kᵀ/√d for the image queries (after `rope`(q, k)
    where the model applies one), summed over heads and over the text columns weighted by
    `columns` [rows, T]: [rows, image queries]. q, k: [rows, heads, L, head_dim]."""
    q, k = torch.cat((q_txt, q_img), dim=2), torch.cat((k_txt, k_img), dim=2)
    if rope is not None:
        q, k = rope(q, k)
    text = q_txt.shape[2]
    q = q[:, :, text:].float()
    k = k.float()
    rows, heads, queries, dim = q.shape
    weights = columns.to(q.device, torch.float32)
    scale = dim ** -0.5
    chunk = max(1, QUERY_CHUNK_ELEMENTS // max(1, heads * k.shape[2]))
    out = q.new_empty((rows, queries))
    for r in range(rows):
        for lo in range(0, queries, chunk):
            scores = torch.matmul(q[r, :, lo : lo + chunk], k[r].transpose(-1, -2)).mul_(scale)
            probs = scores.softmax(dim=-1)[..., :text]
            out[r, lo : lo + chunk] = torch.einsum("hqt,t->q", probs, weights[r])
    return out


def _host_rope(block_class):
    """The `apply_rope` of the module that wrote the block's forward (its globals outlive an
    unload of that module; a subclass's forward defined elsewhere is looked through), or of
    the module of the `attention` function it calls (ComfyUI keeps it in flux/math.py)."""
    for cls in block_class.__mro__:
        namespace = getattr(cls.__dict__.get("forward"), "__globals__", None) or {}
        for found in (namespace.get("apply_rope"),
                      (getattr(namespace.get("attention"), "__globals__", None) or {}).get("apply_rope")):
            if callable(found):
                return found
    return getattr(sys.modules.get(block_class.__module__), "apply_rope", None)


class JointAttention:
    """One pass's reading of the concepts' attention in an MMDiT, armed for one model call
    at a time (see the module's docstring)."""

    def __init__(self, diffusion_model):
        self.layout, blocks = find_layout(diffusion_model)
        self.blocks = observed_blocks(blocks) if blocks else []
        self.text_offset = self.layout.text_offset(diffusion_model) if self.layout else 0
        self.role = {}  # id of a q/k norm → (its block, its role)
        for block in self.blocks:
            for module, role in self.layout.norms(block).items():
                self.role[id(module)] = (block, role)
        self.handles: list = []
        self.call = None
        self.first_list = None  # ComfyUI: the cond list of the first concept, see arm_lists
        self.apply_rope = _host_rope(type(self.blocks[0])) if self.blocks and self.layout.rope else None

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return patch_grid(height, width)

    def options(self, model_options: dict) -> dict:
        return model_options

    def arm(self, start: int, rows: int, grid: tuple[int, int], columns: torch.Tensor) -> None:
        if self.layout is not None and self.layout.rope and self.apply_rope is None:
            raise MaskError("the mask needs the transformer's RoPE function (apply_rope) next to its blocks, "
                            "and this model's module has none")
        self.remove()
        self.first_list = None
        self.call = {"start": start, "rows": rows, "positions": grid[0] * grid[1], "columns": columns,
                     "seen": {}, "pending": {}, "covered": {}, "heads": 0, "total": None}
        for block in self.blocks:
            self.handles.append(block.register_forward_pre_hook(self._block_called, with_kwargs=True))
            for module in self.layout.norms(block):
                self.handles.append(module.register_forward_hook(self._normed))

    def arm_lists(self, first_list: int, rows: int, grid: tuple[int, int], columns: torch.Tensor) -> None:
        """Watch a call that batches several cond lists (ComfyUI's calc_cond_batch): the
        concepts are lists first_list, first_list + 1, …, B rows each, found in each block's
        call by the list index ComfyUI gives each chunk (`transformer_options`'s
        `cond_or_uncond`), not counted."""
        self.arm(0, rows, grid, columns)
        self.first_list = first_list

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def disarm(self) -> None:
        self.call = None
        self.remove()

    def collect(self, grid: tuple[int, int]) -> torch.Tensor:
        call, self.call = self.call, None
        self.remove()
        if call is None or call["total"] is None:
            raise MaskError(f"the mask needs the transformer's joint-attention blocks on the {grid[0]}×{grid[1]} "
                            "patch grid, and none saw the concept rows (does another extension replace the model's "
                            "forward?)")
        short = [i for i, block in enumerate(self.blocks) if call["covered"].get(block, 0) != call["rows"]]
        if short:
            raise MaskError(f"joint-attention block {short[0]} of those read saw "
                            f"{call['covered'].get(self.blocks[short[0]], 0)} of {call['rows']} concept rows")
        return (call["total"] / float(call["heads"])).view(call["rows"], *grid)

    # ---- the hooks ---------------------------------------------------------------------

    def _block_called(self, block, args, kwargs):
        call = self.call
        if call is None:
            return None
        first = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        rows = int(first.shape[0]) if isinstance(first, torch.Tensor) else 0
        offset = call["seen"].get(block, 0)
        call["seen"][block] = offset + rows
        options = kwargs.get("transformer_options") or {}
        call["pending"][block] = {"offset": offset, "rows": rows, "pe": kwargs.get("pe", args[3] if len(args) > 3 else None),
                                  "lists": options.get("cond_or_uncond")}
        return None

    def _normed(self, module, args, output):
        call = self.call
        block, role = self.role.get(id(module), (None, None))
        pending = call["pending"].get(block) if call is not None else None
        if pending is None:
            return None
        if role in ("img", "txt"):  # Flux: (q, k), [B, heads, L, head_dim]
            pending["q_" + role], pending["k_" + role] = output[0], output[1]
        else:  # SD3: q or k, [B, L, heads, head_dim]
            pending[role] = output.transpose(1, 2)
        if all(key in pending for key in ("q_txt", "k_txt", "q_img", "k_img")):
            del call["pending"][block]
            self._add(call, block, pending)
        return None

    def _segments(self, call, pending):
        """(first, last) rows of this block call and where they start among the concept rows."""
        if self.first_list is None:
            lo = max(pending["offset"], call["start"])
            hi = min(pending["offset"] + pending["rows"], call["start"] + call["rows"])
            return [(lo - pending["offset"], hi - pending["offset"], lo - call["start"])] if lo < hi else []
        lists = pending["lists"] or ()
        if not lists or pending["rows"] % len(lists):
            return []
        b = pending["rows"] // len(lists)
        out = []
        for j, index in enumerate(lists):
            slot = index - self.first_list
            if 0 <= slot and (slot + 1) * b <= call["rows"]:
                out.append((j * b, (j + 1) * b, slot * b))
        return out

    def _add(self, call, block, pending) -> None:
        if pending["q_img"].shape[2] != call["positions"]:
            return
        if self.apply_rope is not None and pending["pe"] is None:
            return
        for a, b, at in self._segments(call, pending):
            self._add_rows(call, block, pending, a, b, at)

    def _add_rows(self, call, block, pending, a: int, b: int, at: int) -> None:
        pe = pending["pe"]
        if pe is not None and pe.shape[0] == pending["rows"]:
            pe = pe[a:b]
        # The keys' text part: register tokens (SD3), then the text, as long as the call's
        # conds are; the columns were made for the pass's longest cond.
        columns = call["columns"][at : at + (b - a)]
        text = pending["k_txt"].shape[2]
        columns = torch.nn.functional.pad(columns, (self.text_offset, 0))[:, :text]
        columns = torch.nn.functional.pad(columns, (0, text - columns.shape[1]))
        rope = None if self.apply_rope is None else (lambda q, k: self.apply_rope(q, k, pe))
        with torch.no_grad():
            summed = joint_concept_attention(pending["q_txt"][a:b], pending["q_img"][a:b], pending["k_txt"][a:b],
                                             pending["k_img"][a:b], rope, columns)
        if call["total"] is None:
            call["total"] = summed.new_zeros((call["rows"], call["positions"]))
        call["total"][at : at + (b - a)] += summed
        call["covered"][block] = call["covered"].get(block, 0) + (b - a)
        if call["covered"][block] == call["rows"]:
            call["heads"] += pending["q_img"].shape[1]
