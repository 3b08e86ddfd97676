"""What SEGA does alike in the hosts that sample through a ComfyUI-style UNet patcher
(Forge and reForge; forge-contract.md §1): the pass's patch object and its step plan,
the CFG scale of the pass, the memory the concept rows need, the masks' attention patch.
Each host's module (forge.py, reforge.py) says where the concepts' predictions come from."""

from __future__ import annotations

import math

import torch

from sega import spaces
from sega_webui import attention, concept_rows, inpaint, joint_attention, mask_readers


def cfg_scale(p) -> float:
    if getattr(p, "is_hr_pass", False) and getattr(p, "hr_cfg", None) is not None:
        return float(p.hr_cfg)
    return float(p.cfg_scale)


def guides_cfg_1(p) -> bool:
    """At CFG scale 1 these hosts compute no unconditional prediction unless a post-CFG
    function asks for it; SEGA needs it (reForge: asks; Forge: evaluates it itself)."""
    return math.isclose(cfg_scale(p), 1.0)


def latent_shape(p, channels: int) -> list[int]:
    hires = getattr(p, "is_hr_pass", False)
    width = p.hr_upscale_to_x if hires else p.width
    height = p.hr_upscale_to_y if hires else p.height
    return [channels, height // 8, width // 8]


def extra_memory(unet, p, rows: int, plain_rows: int) -> int:
    """What a call of `rows`·B rows needs beyond the `plain_rows`·B of a plain step, which
    the host already keeps free."""
    if rows <= plain_rows:
        return 0
    b = int(p.batch_size)
    channels = int(getattr(p.sd_model, "latent_channels", 4) or 4)
    shape = latent_shape(p, channels)
    try:
        return max(0, int(unet.memory_required([rows * b, *shape])) - int(unet.memory_required([plain_rows * b, *shape])))
    except Exception:  # a patcher without an estimate: the host's own reserve stays as it is
        return 0


def mask_problem(args, model, joint: bool = False) -> str | None:
    """Known before sampling: masks on a model whose attention to the text SEGA cannot read
    (`joint`: whether this host's concept call can be watched in a Flux-shaped model's joint
    attention). Then SEGA stays out of the pass entirely: the image is the host's own."""
    if args.uses_masks and mask_readers.for_patcher(model.diffusion_model, joint) is None:
        return NO_CROSS_ATTENTION
    return None


NO_CROSS_ATTENTION = ("implicit masks need the model's cross-attention layers (or, in Forge, the joint blocks of "
                      "its Flux or SD3 transformer), and SEGA finds neither here; clear the concepts' mask setting "
                      "to use SEGA")
UNGUIDED_KEY = "SEGA unguided"  # the infotext's note: the host's API returns no comments
UNGUIDED_STEPS = "steps without a negative-prompt prediction (Skip Early CFG or NGMS)"
UNGUIDED = ("SEGA left some steps unguided: the WebUI computed no negative-prompt prediction there "
            "(its Skip Early CFG or NGMS option), and SEGA steers against it")


class Patch:
    """SEGA's functions on one pass's UNet patcher."""

    JOINT = False  # whether the masks may read a Flux-shaped model's joint attention (see reader)

    def __init__(self, run, p, pass_, space: str):
        self.run, self.p, self.pass_, self.space = run, p, pass_, space

    def __deepcopy__(self, memo):
        # Every clone of a UNet patcher deep-copies its model_options, and with them the
        # objects our bound methods hang on: a later clone (Forge's hires hook, another
        # extension's patch) must call THIS pass's functions, not a copy of the run and of
        # `p` (which also holds locks that cannot be copied).
        return self

    def idle(self) -> bool:
        pass_ = self.pass_
        return pass_.stopped or pass_.inverting or not pass_.schedules

    def note_unguided(self) -> None:
        """A step the host computed without its unconditional prediction (at CFG scale 1 SEGA
        evaluates it itself on Forge and has reForge compute it, so only the hosts' skip
        options get here)."""
        self.run.comment(self.p, UNGUIDED)
        self.p.extra_generation_params[UNGUIDED_KEY] = UNGUIDED_STEPS

    def plan(self):
        """(denoiser, step, active concepts) for this model call, or None where SEGA adds
        nothing to it."""
        pass_, p = self.pass_, self.p
        if pass_.error:
            self.run.fail(p, pass_, pass_.error)
            return None
        denoiser = p.sampler.model_wrap_cfg
        if pass_.guidance is None:
            pass_.start(getattr(denoiser, "steps", None) or p.steps)
        step = pass_.clock.step_for_call(denoiser.step)
        if pass_.guidance.is_idle(step):
            return None
        return denoiser, step, pass_.guidance.rows_needed(step)

    def concept_conds(self, active, batch: int, call: int, like: torch.Tensor):
        """The active concepts' A1111 conds [K·B, …] (SDXL: a dict), on `like`'s device."""
        first = self.pass_.schedules[0][0].cond
        like = {key: like for key in first} if isinstance(first, dict) else like
        return concept_rows.build(self.pass_, active, batch, call, like, None)

    def masks(self, model, active, step: int, call: int, x: torch.Tensor, first_list: int | None = None):
        """The masks' reader armed for this call's K·B concept rows (`first_list`: as cond
        lists of a batched call, see PatchedAttention.arm_lists), or None when no acting
        concept uses a mask."""
        pass_ = self.pass_
        if not active or not pass_.guidance.needs_attention(step):
            return None
        if not isinstance(pass_.masks, (attention.PatchedAttention, joint_attention.JointAttention)):
            pass_.masks = mask_readers.for_patcher(model.diffusion_model, joint=first_list is None and self.JOINT)
            if pass_.masks is None:
                raise attention.MaskError(NO_CROSS_ATTENTION)
        masks = pass_.masks
        columns = attention.concept_columns(pass_, self.p.sd_model, active, x.shape[0], call,
                                            concept_rows.schedule_index, x.device, masks.tokenizer(self.p.sd_model))
        rows, grid = len(active) * x.shape[0], masks.grid(*x.shape[-2:])
        if first_list is None:
            masks.arm(0, rows, grid, columns)
        else:
            masks.arm_lists(first_list, rows, grid, columns)
        return masks

    def term(self, step: int, denoiser, x, sigma, uncond, concepts, masks, k: int, alphas_cumprod):
        """The engine's term for this step, from the hosts' x0 predictions."""
        maps = early = None
        if masks is not None:
            grid = masks.grid(*x.shape[-2:])
            maps = masks.collect(grid).view(k, x.shape[0], *grid)
            early = attention.early_rows(sigma, False, alphas_cumprod, flow=self.space == spaces.FLOW)
        uncond, concepts = spaces.noise_estimates(self.space, x, sigma, uncond, concepts)
        return self.pass_.guidance.step(step, uncond, concepts, inpaint.region(inpaint.repaint_share(denoiser), uncond),
                                        attention=maps, early=early)

    def guided(self, denoised, term_fn, sigma):
        """`denoised` with the term `term_fn()` added; on a failure SEGA stops with the reason
        and the host's result stays as it was."""
        pass_ = self.pass_
        try:
            term = term_fn()
            if term is None:
                return denoised
            out = spaces.add_term(self.space, denoised, term.to(denoised.dtype), sigma)
        except attention.MaskError as e:  # a model the masks cannot read: the reason is the message
            self.run.fail(self.p, pass_, str(e))
            return denoised
        except Exception as e:  # the host would stop the generation; SEGA stops instead
            self.run.fail(self.p, pass_, f"an error while adding its term ({type(e).__name__}: {e})", e)
            return denoised
        self.run.acted = True
        return out
