"""SEGA on a ComfyUI MODEL (ComfyUI 0.8.0; comfy-contract.md §2–§4, §7).

The SEGA node clones the model and puts three functions on the clone's `model_options`,
which every sampler node (KSampler, KSamplerAdvanced, SamplerCustom, SamplerCustomAdvanced
with CFGGuider or BasicGuider) carries into its run:

- a `SAMPLER_SAMPLE` wrapper, entered once per sampling run: it makes the run's state (the
  guidance with its momentum, the step clock from the run's σs and the sampler's
  callback, the concepts' cond dicts encoded for this model and latent) and puts it on
  the run's own copy of the model options, so nothing carries from one run to the next,
  cached node outputs and a model shared by several samplers included;
- a `CALC_COND_BATCH` wrapper (composable: every pack's wrapper runs) that appends one cond
  list per concept acting at this step to the step's call [positive, negative] and hands
  the sampler back only what it asked for: the concepts ride in ComfyUI's own batched call,
  split by ComfyUI only when memory is short;
- a post-CFG function that adds SEGA's term to the guided x0 (flow models: the flow space).

At CFG 1 ComfyUI evaluates no negative prompt (and BasicGuider has none): SEGA appends it
as one more list, with the positive's Flux guidance, so those runs are guided and
ComfyUI's own result stays exactly the positive's prediction.
"""

from __future__ import annotations

import logging
from collections import deque

import torch

from sega import cond_lists, spaces
from sega.args import SegaArgs
from sega.attention import MaskError, PatchedAttention, early_rows
from sega.joint_attention import JointAttention
from sega.sigma_clock import SigmaClock

LOG = logging.getLogger("sd-webui-sega")
WRAPPER_KEY = "sd-webui-sega"
NO_CROSS_ATTENTION = ("implicit masks need the model's cross-attention layers (SD 1.x, SD 2.x, SDXL UNets) or the "
                      "joint-attention blocks of a Flux or SD3 transformer, and this model has neither; use "
                      "mask=threshold")
GUIDERS = ("a guider that batches the prompt first (CFGGuider, BasicGuider, KSampler): "
           "this one calls the model in its own order")


def _sampler_function(sampler) -> str:
    function = getattr(sampler, "sampler_function", None)
    return getattr(function, "__name__", "") or ""


class Run:
    """One sampling run's SEGA state."""

    def __init__(self, patch: SegaPatch, guider, sigmas, sampler, noise, latent_image, denoise_mask, seed):
        self.patch = patch
        self.clock = SigmaClock(sigmas.tolist(), _sampler_function(sampler))
        self.guidance = patch.args.guidance(self.clock.steps)
        conds = getattr(guider, "conds", None) or {}
        self.positive = conds.get("positive")
        self.negative = conds.get("negative")
        self.space = cond_lists.output_space(guider.inner_model.model_sampling)
        self.stopped = None  # why SEGA stopped in this run, once it did
        self.seen = None  # (step, active, concept outputs, negative output, masks armed) of the step's call
        self.calls = 0  # the step's calls SEGA joined
        self.masks = self.own_negative = None
        self.columns_made: dict = {}
        if not self.positive:
            self.stop("the sampler has no positive conditioning to steer from")
            return
        encode = _Encoder(guider, noise, latent_image, denoise_mask, seed, self.positive[0])
        self.concepts = [encode(c) for c in patch.concepts]
        if patch.args.uses_masks:
            self.masks = _reader(guider.inner_model.diffusion_model)
            if self.masks is None:
                self.stop(NO_CROSS_ATTENTION)
        sigmas_table = getattr(guider.inner_model.model_sampling, "sigmas", None)
        self.alphas_cumprod = None if sigmas_table is None else 1.0 / (1.0 + sigmas_table.float() ** 2)
        self.own_negative = encode(patch.negative) if patch.negative is not None else None
        if self.negative is not None:
            # At CFG 1 SEGA evaluates the sampler's negative itself; Flux's distilled
            # guidance is the positive's, as the image's own call gets it.
            self.own_negative = [_with_guidance(d, self.positive[0]) for d in self.negative]

    def stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason
            LOG.warning("SEGA is off for the rest of this sampling run: %s", reason)

    # ---- the step's call ------------------------------------------------------------

    def extend(self, executor, model, conds, x, timestep, options):
        self.seen = None
        self.calls += 1
        step = self.clock.step_for(float(timestep.reshape(-1)[0]))
        if self.guidance.is_idle(step):
            return executor(model, conds, x, timestep, options)
        active = self.guidance.rows_needed(step)
        lists = [self.concepts[i] for i in active]
        own_uncond = conds[1] is None
        if own_uncond:
            if self.own_negative is None:
                self.stop("the sampler has no negative conditioning and the SEGA node was given none")
                return executor(model, conds, x, timestep, options)
            lists.append(self.own_negative)
        if not lists:
            self.seen = (step, active, None, None, False)
            return executor(model, conds, x, timestep, options)
        watched = options
        masked = bool(active) and self.guidance.needs_attention(step)
        if masked:
            self.masks.arm_lists(len(conds), len(active) * x.shape[0], self.masks.grid(*x.shape[-2:]),
                                 self._columns(active, x.shape[0], lists[0][0], x.device))
            watched = self.masks.options(options)
        out, extra = cond_lists.call_with_lists(
            executor, model, conds, x, timestep, watched, lists, options,
            lambda e: self.stop(f"the model call with its rows failed ({type(e).__name__}: {e})"))
        if extra is not None:
            concepts = extra[: len(active)] if active else None
            self.seen = (step, active, concepts, extra[-1] if own_uncond else None, masked)
        elif masked:
            self.masks.disarm()
        return out

    def _columns(self, active, batch: int, concept: dict, device) -> torch.Tensor:
        """[K·B, L]: 1 at each acting concept's own token columns in its context (made once
        per set of acting concepts: the step's hot path only looks it up)."""
        length = concept["model_conds"]["c_crossattn"].cond.shape[1]
        key = (tuple(active), batch, length, device)
        if key not in self.columns_made:
            self.columns_made[key] = self._make_columns(active, batch, length, device)
        return self.columns_made[key]

    def _make_columns(self, active, batch: int, length: int, device) -> torch.Tensor:
        out = torch.zeros((len(active), length))
        for row, i in enumerate(active):
            out[row, [c for c in _context_columns(self.masks, self.patch.columns[i], length) if c < length]] = 1.0
        return out.repeat_interleave(batch, dim=0).to(device)

    def term(self, args):
        seen, self.seen = self.seen, None
        denoised = args["denoised"]
        if seen is None or self.stopped:
            return denoised
        step, active, concepts, own_uncond, masked = seen
        uncond = own_uncond if own_uncond is not None else args["uncond_denoised"]
        x, sigma = args["input"], args["sigma"]
        try:
            maps = early = None
            if masked:
                grid = self.masks.grid(*x.shape[-2:])
                maps = self.masks.collect(grid).view(len(active), x.shape[0], *grid)
                early = early_rows(sigma, False, self.alphas_cumprod, flow=self.space == spaces.FLOW)
            eps_u, eps_c = spaces.noise_estimates(self.space, x, sigma, uncond, concepts)
            term = self.guidance.step(step, eps_u, eps_c, attention=maps, early=early)
            out = spaces.add_term(self.space, denoised, term.to(denoised.dtype), sigma)
        except MaskError as e:  # a model whose attention the masks cannot read: the reason says why
            self.stop(str(e))
            return denoised
        except Exception as e:  # ComfyUI would stop the graph: SEGA stops, the image is made
            if cond_lists.is_cancel(e):
                raise
            self.stop(f"an error while adding its term ({type(e).__name__}: {e})")
            return denoised
        return out


def _reader(diffusion_model):
    """The masks' reader for a model: its cross-attention layers through the attn2 patch, or
    a Flux / SD3 transformer's joint attention through hooks on its q/k norms; None if
    neither can be read."""
    patched = PatchedAttention(diffusion_model)
    if patched.by_block:
        return patched
    joint = JointAttention(diffusion_model)
    return joint if joint.blocks else None


def _context_columns(reader, words: dict | None, length: int) -> list[int]:
    """A concept's token columns in the context the attention sees, from its words in each
    encoder's tokens (`nodes._encode`): a UNet's context is its CLIP's tokens (SDXL's two
    encoders cut the text alike); Flux's is T5's; SD3's is CLIP-L/G's chunks, then T5's
    tokens when T5 is loaded."""
    if not words:
        return []
    first = words.get("l") or words.get("g") or next(iter(words.values()))
    layout = getattr(getattr(reader, "layout", None), "name", "")
    if layout == "flux":
        return list((words.get("t5xxl") or first)[0])
    if layout == "sd3" and "t5xxl" in words:
        clip_columns, clip_length = first
        return list(clip_columns) + ([clip_length + c for c in words["t5xxl"][0]] if length > clip_length else [])
    return list(first[0])


class _Encoder:
    """Concept conditionings as cond dicts of this run: the positive's dict with the
    concept's text, its model conds made by the model for this latent (ComfyUI's
    `encode_model_conds`, as the sampler made the positive's)."""

    def __init__(self, guider, noise, latent_image, denoise_mask, seed, prompt):
        from comfy import sampler_helpers, samplers

        self.convert, self.encode_model_conds = sampler_helpers.convert_cond, samplers.encode_model_conds
        self.model = guider.inner_model
        self.noise, self.latent_image, self.denoise_mask, self.seed = noise, latent_image, denoise_mask, seed
        self.prompt = prompt

    def __call__(self, conditioning) -> list[dict]:
        dicts = [cond_lists.concept_cond(self.prompt, c) for c in self.convert(conditioning)]
        for d in dicts:  # the prompt's model conds hold the prompt's text: the model makes them anew
            d["model_conds"] = {}
        return self.encode_model_conds(self.model.extra_conds, dicts, self.noise, self.noise.device, "positive",
                                       latent_image=self.latent_image, denoise_mask=self.denoise_mask, seed=self.seed)


def _with_guidance(cond: dict, positive: dict) -> dict:
    guidance = positive.get("model_conds", {}).get("guidance")
    if guidance is None:
        return cond
    return {**cond, "model_conds": {**cond.get("model_conds", {}), "guidance": guidance}}


class SegaPatch:
    """The functions on one SEGA node's model; `concepts`: one CONDITIONING per concept, in
    the order of `args.concepts`; `negative`: the CONDITIONING SEGA steers against where the
    sampler evaluates none (CFG 1, BasicGuider); `columns`: where each concept's words are in
    each encoder's tokens (for the masks; None for a concept given as conditioning)."""

    def __init__(self, args: SegaArgs, concepts: list, negative=None, columns=None):
        self.args, self.concepts, self.negative = args, list(concepts), negative
        self.columns = list(columns) if columns is not None else [None] * len(self.concepts)
        self.key = f"{WRAPPER_KEY}:{id(self)}"
        # The last runs' results and where each concept acted, for the SEGA Maps node (which
        # finds its run by the samples it is given: a cached sampler keeps its run here).
        self.runs: deque = deque(maxlen=8)

    def __deepcopy__(self, memo):
        # Every clone of a ModelPatcher deep-copies its model_options and with them the
        # objects our bound methods hang on; a later node's clone must keep THIS patch
        # (and not copy the encoded concepts).
        return self

    def install(self, model_patcher):
        from comfy import patcher_extension

        model = model_patcher.clone()
        options = model.model_options
        patcher_extension.add_wrapper_with_key(patcher_extension.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY,
                                               self.sampler_sample, options, is_model_options=True)
        patcher_extension.add_wrapper_with_key(patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY,
                                               self.calc_cond_batch, options, is_model_options=True)
        model.set_model_sampler_post_cfg_function(self.post_cfg)
        return model

    def _run(self, model_options) -> Run | None:
        return model_options.get(self.key) if model_options else None

    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, noise, latent_image=None,
                       denoise_mask=None, disable_pbar=False):
        options = extra_args.get("model_options")
        if options is None or len(sigmas) < 2:
            return executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        try:
            run = Run(self, guider, sigmas, executor.class_obj, noise, latent_image, denoise_mask,
                      extra_args.get("seed"))
        except Exception as e:  # the run goes on without SEGA, never half set up
            if cond_lists.is_cancel(e):
                raise
            LOG.warning("SEGA is off for this sampling run: %s: %s", type(e).__name__, e)
            return executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        options[self.key] = run  # the run's own copy of the options (CFGGuider.inner_sample)

        def counted(step, denoised, x, total):
            run.clock.on_callback(step)
            if callback is not None:
                return callback(step, denoised, x, total)

        try:
            samples = executor(guider, sigmas, extra_args, counted, noise, latent_image, denoise_mask, disable_pbar)
        finally:
            options.pop(self.key, None)
            if run.masks is not None:
                run.masks.disarm()  # a run that stopped mid-step leaves no hook behind
        # Only a run that went through says whether SEGA joined it (a failing sampler says why itself).
        if not run.calls and not run.stopped:
            LOG.warning("SEGA did not act in this run: it needs %s", GUIDERS)
        self._keep(run, guider, samples)
        return samples

    def _keep(self, run: Run, guider, samples) -> None:
        maps = run.guidance.maps
        if maps is None:
            return
        # The LATENT the sampler node hands on (CFGGuider.inner_sample's process_latent_out).
        out = guider.inner_model.process_latent_out(samples.to(torch.float32)).cpu()
        result, mask = maps.result(), maps.mask_result()
        self.runs.append((out, None if result is None else result.float().cpu(),
                          None if mask is None else mask.float().cpu()))

    def maps_for(self, samples: torch.Tensor):
        """(maps [N, B, h, w] or None, masks or None) of the run that made `samples`; KeyError
        when no kept run did."""
        samples = samples.to(torch.float32).cpu()
        for out, maps, mask in reversed(self.runs):
            if out.shape == samples.shape and torch.equal(out, samples):
                return maps, mask
        raise KeyError("no sampling run of this SEGA model made these samples")

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run = self._run(model_options)
        # The step's call is the one whose first list is the run's positive (PAG's, SAG's
        # and other patches' own calls pass one list, DualCFG puts the negative first).
        if run is None or run.stopped or len(conds) < 2 or conds[0] is not run.positive:
            return executor(model, conds, x_in, timestep, model_options)
        return run.extend(executor, model, conds, x_in, timestep, model_options)

    def post_cfg(self, args):
        run = self._run(args.get("model_options"))
        if run is None:
            return args["denoised"]
        return run.term(args)

