"""SEGA in reForge's sampling loop (Panchovix/stable-diffusion-webui-reForge main @ 3b56b268;
forge-contract.md §1).

reForge keeps A1111's model objects and conditioning but hands each step to
`ldm_patched.modules.samplers.sampling_function`, which never fires `on_cfg_denoised` and
ignores added cond rows. Its `calc_cond_batch` takes a list of condition lists and returns
one output per list, packing them into as few model calls as memory allows — so SEGA stays
at one batched call per step there, as on A1111. Before every sampling pass SEGA patches a
clone of the pass's UNet patcher (`p.sd_model.forge_objects.unet`, reset by reForge before
each pass):

- a `CALC_COND_BATCH` wrapper (composable: every extension's wrapper runs, keyed by its
  name) appends one cond list per concept acting at this step — a copy of the prompt's
  cond dict with the concept's text, so an inpainting model's `c_concat`, ControlNet's
  `control` and area or mask settings carry over — and hands the host back only the
  outputs it asked for, keeping the concepts' for the step;
- a post-CFG function adds SEGA's term to reForge's guided result, in the x0 space every
  reForge sampler gets (flow models: sega/spaces.py's flow space).

Steps where reForge computes no unconditional prediction (its skip-early-CFG and NGMS
options) are left unguided; at CFG scale 1 the patch turns reForge's shortcut off so those
steps are guided. Masks read the concepts' rows of the batched call through an
observe-only `attn2_patch` (reForge does not hand `transformer_options` to `attn2`'s
forward), which finds them by the list index reForge gives each chunk.
"""

from __future__ import annotations

from sega import cond_lists
from sega_webui import patcher

WRAPPER_KEY = "sd-webui-sega"
REPLACED = ("another extension replaced reForge's batched model call (sampler_calc_cond_batch_function), "
            "so the concepts' predictions cannot join it")


EDIT_SAMPLERS = ("photo editing needs reForge's A1111 sampler functions (Settings → Stable Diffusion → SD Sampling "
                 "Backend for A1111 samplers: A1111, then restart reForge); with 'ldm patched (Comfy)' the samplers "
                 "take their noise settings from elsewhere and the inversion could not retrace them")


def edit_problem() -> str | None:
    """reForge's default samplers (k_diff/k_diffusion/sampling.py) make k-diffusion's updates,
    which the inversion retraces; its ComfyUI ones read eta and s_noise from the settings and
    step in another log-SNR parameterisation."""
    from modules import shared

    choice = getattr(shared.opts, "sd_sampling", "A1111")
    return None if choice in (None, "A1111") else EDIT_SAMPLERS


def install(p, run, pass_) -> None:
    """Put SEGA's wrapper and post-CFG function on a clone of the pass's UNet patcher (called
    from `process_before_every_sampling`, after the pass is set up)."""
    from ldm_patched.modules import patcher_extension

    objects = p.sd_model.forge_objects
    if getattr(objects.unet, "_sega_pass", None) is pass_:
        return  # this pass's patcher is patched already
    reason = patcher.mask_problem(run.args, objects.unet.model)
    if reason:
        run.fail(p, pass_, reason)
        return
    pass_.lead = None  # reForge's ControlNet marks no token in front of the prompt's chunks
    unet = objects.unet.clone()
    patch = ReforgePatch(run, p, pass_, cond_lists.output_space(getattr(unet.model, "model_sampling", None)))
    patcher_extension.add_wrapper_with_key(patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY,
                                           patch.calc_cond_batch, unet.model_options, is_model_options=True)
    unet.set_model_sampler_post_cfg_function(patch.post_cfg, disable_cfg1_optimization=patcher.guides_cfg_1(p))
    # One call of (2 + K)·B rows where a plain step has 2B; reForge splits a call that does
    # not fit, this keeps it whole where memory allows.
    extra = patcher.extra_memory(unet, p, 2 + len(pass_.schedules), 2)
    if extra > 0 and hasattr(unet, "add_extra_preserved_memory_during_sampling"):
        unet.add_extra_preserved_memory_during_sampling(extra)
    unet._sega_pass = pass_
    objects.unet = unet


class _Step:
    """What the wrapper learnt of one model call for the post-CFG function."""

    def __init__(self, plan=None, concepts=None, masks=None):
        self.plan, self.concepts, self.masks = plan, concepts, masks


class ReforgePatch(patcher.Patch):
    """SEGA's CALC_COND_BATCH wrapper and post-CFG function for one sampling pass."""

    def __init__(self, run, p, pass_, space: str):
        super().__init__(run, p, pass_, space)
        self.step: _Step | None = None

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        if len(conds) < 2:
            # Not the step's call ([cond, uncond] at least, uncond None where skipped): another
            # patch's own model call with the pass's options — SAG's post-CFG function calls
            # calc_cond_batch(model, [uncond], …) before SEGA's runs. What SEGA learnt of the
            # step stays for its post-CFG function.
            return executor(model, conds, x_in, timestep, model_options)
        self.step = None
        # conds: [cond, uncond, lists of wrappers that run before this one…]
        if self.idle() or len(conds) < 2 or not conds[0] or conds[1] is None:
            if not self.idle() and len(conds) >= 2 and conds[1] is None:
                self.note_unguided()  # no uncond: nothing to steer against
            return executor(model, conds, x_in, timestep, model_options)
        try:
            step, lists, options = self._extend(model, conds, x_in, model_options)
        except Exception as e:
            self.run.fail(self.p, self.pass_, f"an error while adding its rows to the model call ({type(e).__name__}: {e})", e)
            return executor(model, conds, x_in, timestep, model_options)
        if not lists:
            self.step = step
            return executor(model, conds, x_in, timestep, model_options)
        out, step.concepts = cond_lists.call_with_lists(
            executor, model, conds, x_in, timestep, options, lists, model_options,
            lambda e: self.run.fail(self.p, self.pass_, f"the model call with its rows failed ({type(e).__name__}: {e})", e))
        if step.concepts is not None:
            self.step = step
        return out

    def _extend(self, model, conds, x_in, model_options):
        """This call's step and the concepts' cond lists (one per acting concept)."""
        from modules_forge.forge_sampler import cond_from_a1111_to_patched_ldm

        plan = self.plan()
        if plan is None:
            return _Step(), [], model_options
        denoiser, step, active = plan
        b = x_in.shape[0]
        masks = self.masks(model, active, step, denoiser.step, x_in, first_list=len(conds))
        lists = []
        if active:
            cond = self.concept_conds(active, b, denoiser.step, x_in)
            prompt = conds[0][0]
            for i in range(len(active)):
                rows = {k: v[i * b : (i + 1) * b] for k, v in cond.items()} if isinstance(cond, dict) else cond[i * b : (i + 1) * b]
                lists.append([cond_lists.concept_cond(prompt, cond_from_a1111_to_patched_ldm(rows)[0])])
        if masks is not None:
            model_options = masks.options(model_options)
        return _Step(plan, None, masks), lists, model_options

    def post_cfg(self, args):
        denoised = args["denoised"]
        seen, self.step = self.step, None
        if self.idle() or args.get("uncond") is None:
            return denoised
        if seen is None:  # a guided step whose batched call SEGA never saw
            if not self.pass_.error and "sampler_calc_cond_batch_function" in args["model_options"]:
                self.run.fail(self.p, self.pass_, REPLACED)
            return denoised
        if seen.plan is None:
            return denoised
        return self.guided(denoised, lambda: self._term(args, seen), args["sigma"])

    def _term(self, args, seen: _Step):
        denoiser, step, active = seen.plan
        sigmas = getattr(getattr(args["model"], "model_sampling", None), "sigmas", None)
        alphas_cumprod = None if sigmas is None else 1.0 / (1.0 + sigmas.float() ** 2)  # σ² = (1 − ᾱ)/ᾱ
        return self.term(step, denoiser, args["input"], args["sigma"], args["uncond_denoised"], seen.concepts,
                         seen.masks, len(active), alphas_cumprod)
