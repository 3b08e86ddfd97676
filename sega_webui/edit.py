"""Editing the input image in img2img: the inversion inside the WebUI's own sampling.

With "Edit the input image" on, the img2img pass's sampler function is launched twice in
effect: first `sega.inversion.invert` walks the pass's sigma schedule through the photo's
noisy latents, calling the WebUI's CFG denoiser exactly as the sampler will (same object,
same arguments, the same call counter, so prompt editing, CFG, the inpainting blend and
other extensions' per-call behaviour are the sampling pass's), while SEGA adds nothing;
then the sampler runs with a `noise_sampler` that replays the noises the inversion solved
for, and the residual of its last step is added to its result. With no concept acting,
the output is the photo (up to float rounding); with concepts, only what they pull on moves.

Inversions are kept (`Settings → SEGA → inversions kept`), keyed by everything that reaches
the model calls, so editing the same photo again with other concepts skips the inversion.
That store is the one piece of state that outlives a generation by design; entries are
written only once an inversion is complete, so Interrupt or Skip never leaves half of one.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
from modules import shared

from sega.digest import LruStore, fingerprint
from sega.inversion import Inversion, InversionError, check, invert
from sega_webui import models

CACHE_OPTION = "sega_inversion_cache"
CACHE_DEFAULT = 4
OFF_KEY = "SEGA invert off"
# Keeps the trajectory's draws apart from the WebUI's own noise for the same seed.
_SEED_SALT = 0x5E6A_1D17
_cache = LruStore(lambda inv: inv.nbytes)


@dataclass
class EditPlan:
    """The img2img pass's edit: set up in `plan`, carried out when the sampler launches."""

    p: object
    run: object  # host.SegaRun, for telling the user
    funcname: str
    # The host's conditions on the denoiser's calls while editing (a context manager factory
    # taking the denoiser; forge.edit_calls), None where its calls need none.
    calls: object = None

    def decline(self, reason: str) -> None:
        """The pass runs as ordinary img2img with SEGA; the user reads why."""
        self.run.comment(self.p, f"SEGA: the image was not inverted, so this is ordinary img2img with SEGA: {reason}")
        self.p.extra_generation_params[OFF_KEY] = reason


def plan(p, run, sampler, hires: bool) -> EditPlan | None:
    """The pass's edit plan, or None when the pass is not an edit."""
    if not run.args.invert or hires:
        return None
    funcname = getattr(sampler, "funcname", None)
    funcname = getattr(funcname, "__name__", funcname)
    edit = EditPlan(p, run, str(funcname))
    try:
        check(edit.funcname, 1.0, 1.0)
        if getattr(p, "refiner_checkpoint_info", None) is not None:
            # The switch would happen inside the inversion's calls, and sampling would then
            # start on the other model: the two would not make the same calls.
            raise InversionError("the refiner switches checkpoints in the middle of the pass; turn it off to edit")
    except InversionError as e:
        edit.decline(str(e))
        return None
    return edit


def capacity() -> int:
    try:
        return max(int(getattr(shared.opts, CACHE_OPTION, CACHE_DEFAULT)), 0)
    except (TypeError, ValueError):
        return CACHE_DEFAULT


def clear_cache() -> None:
    _cache.clear()


def cache_stats() -> tuple[int, int]:
    """(inversions kept, their bytes)."""
    return len(_cache), _cache.nbytes


def launch(edit: EditPlan, pass_, launch_fn, args, kwargs):
    """Run the sampler function `launch_fn(*args, **kwargs)` as an edit of the init latent."""
    denoiser, x_start = args[0], args[1]
    params = inspect.signature(launch_fn).parameters
    eta = kwargs.get("eta", _default(params, "eta", 1.0))
    s_noise = kwargs.get("s_noise", _default(params, "s_noise", 1.0))
    options = {k: kwargs[k] for k in ("solver_type", "r") if k in kwargs}
    sigmas = kwargs.get("sigmas")
    x0 = getattr(denoiser, "init_latent", None)
    try:
        check(edit.funcname, eta, s_noise)
        if sigmas is None or x0 is None or "noise_sampler" not in params:
            raise InversionError("the sampler was not launched the way an img2img pass launches it")
    except InversionError as e:
        edit.decline(str(e))
        return launch_fn(*args, **kwargs)

    extra_args = dict(kwargs.get("extra_args") or {})
    photo = _photo(edit.p)
    # The WebUI encodes the photo by sampling the VAE's posterior (from the global RNG), so
    # the same photo gives latents that differ in their last bits from one request to the
    # next: the key names the photo by its pixels where it can, and a hit brings back the
    # latents the inversion was made from (start, init and image conditioning, all made from
    # those pixels), so that sampling retraces the inversion's calls exactly.
    made_from = (x0.shape, x_start.shape) if photo is not None else (x_start, x0, extra_args.get("image_cond"))
    key = fingerprint(
        "sega-inversion-2", edit.funcname, float(eta), float(s_noise), options, sigmas, photo, made_from,
        getattr(denoiser, "mask", None), getattr(denoiser, "nmask", None),
        bool(getattr(denoiser, "mask_before_denoising", False)),
        {k: v for k, v in extra_args.items() if k != "image_cond"},
        _seeds(edit.p, x0.shape[0]), _model_identity(), _host_options(), _prompts(edit.p),
        _other_scripts_args(edit.p, edit.run),
    )
    _cache.trim(capacity())  # the setting may have been lowered since
    found = _cache.get(key)
    if found is not None and photo is not None:
        x_start, x0 = found.kept["x_start"], found.kept["x0"]
        denoiser.init_latent = x0
        args = (args[0], x_start, *args[2:])
        if found.kept.get("image_cond") is not None:
            extra_args["image_cond"] = found.kept["image_cond"]
            kwargs = {**kwargs, "extra_args": extra_args}
    calls = edit.calls if edit.calls is not None else _as_is
    if found is None:
        try:
            with calls(denoiser):
                found = _invert(edit, pass_, denoiser, x_start, x0, sigmas, kwargs, eta, s_noise, options)
        except InversionError as e:
            edit.decline(str(e))
            return launch_fn(*args, **kwargs)
        except Exception as e:  # never cost the user the image: sample as plain img2img
            import traceback

            traceback.print_exc()
            edit.decline(f"the inversion failed ({type(e).__name__}: {e})")
            return launch_fn(*args, **kwargs)
        if photo is not None:
            found.kept = {"x_start": x_start, "x0": x0, "image_cond": extra_args.get("image_cond")}
        _cache.put(key, found, capacity())
        print(f"[SEGA] inverted the input image: {found.model_calls} model calls, {found.nbytes / 2**10:.0f} KB "
              f"({len(_cache)} inversions kept, {_cache.nbytes / 2**20:.1f} MB)")
    else:
        print("[SEGA] inversion found in the cache: editing without inverting again")
    with calls(denoiser):
        out = launch_fn(*args, **{**kwargs, "noise_sampler": found.noise_sampler()})
    return out + found.residual.to(device=out.device, dtype=out.dtype)


@contextlib.contextmanager
def _as_is(denoiser):
    yield


def _invert(edit: EditPlan, pass_, denoiser, x_start, x0, sigmas, kwargs, eta, s_noise, options) -> Inversion:
    """The inversion, its model calls made through the host's CFG denoiser while SEGA
    stays out of them; the denoiser's call counter, the progress state and the sampler's
    last latent are as the sampling pass expects them afterwards, whatever happens."""
    state = shared.state
    extra_args = kwargs.get("extra_args") or {}
    s_in = x_start.new_ones([x_start.shape[0]])
    steps = len(sigmas) - 1
    sampler = getattr(denoiser, "sampler", None)
    saved = (state.sampling_step, getattr(state, "textinfo", None), getattr(sampler, "last_latent", None))

    def denoise(x, sigma):
        return denoiser(x, sigma * s_in, **extra_args)

    def progress(i, phase):
        # Mirrors the sampler's callback (it sets the step after a step's first call), so
        # code reading the step in the model call sees what it will see when sampling.
        if phase == 0:
            state.textinfo = f"SEGA inversion {i + 1}/{steps}"
        else:
            state.sampling_step = i

    pass_.inverting = True
    denoiser.step = 0
    state.sampling_step = 0
    try:
        return invert(edit.funcname, denoise, x_start, x0, sigmas, _draws(edit.p, x0), eta=eta, s_noise=s_noise,
                      options=options, on_step=progress,
                      add_noise=models.noising(shared.sd_model),  # SD3, Flux: flow models
                      rectified_flow=models.rectified_flow_sampling(denoiser))
    finally:
        pass_.inverting = False
        denoiser.step = 0
        state.sampling_step, state.textinfo = saved[0], saved[1]
        if sampler is not None:
            sampler.last_latent = saved[2]


def _draws(p, like: torch.Tensor):
    """Standard-normal draws shaped like the batch, each image from its own seed, so that an
    image's edit does not depend on the batch it is made in."""
    generators = [torch.Generator().manual_seed((int(s) * 1_000_003 + _SEED_SALT) % 2**63)
                  for s in _seeds(p, like.shape[0])]

    def draw():
        return torch.stack([torch.randn(like.shape[1:], generator=g) for g in generators]).to(like.device, like.dtype)

    return draw


def _seeds(p, n: int) -> list[int]:
    seeds = getattr(p, "seeds", None)
    if not seeds or len(seeds) != n:
        all_seeds, i = getattr(p, "all_seeds", None), getattr(p, "iteration", 0) or 0
        seeds = all_seeds[i * n:(i + 1) * n] if all_seeds else None
    if not seeds or len(seeds) != n:
        seeds = [int(getattr(p, "seed", 0) or 0) + j for j in range(n)]
    return [int(s) for s in seeds]


def _photo(p):
    """The input image(s) and mask as pixels, and everything that turns them into latents;
    None where `p` holds no init images."""
    images = getattr(p, "init_images", None)
    if images is None:
        return None
    names = ("resize_mode", "mask_blur_x", "mask_blur_y", "mask_blur", "mask_round", "inpainting_fill",
             "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "inpainting_mask_weight",
             "width", "height", "denoising_strength")
    opts = shared.opts
    return (images, getattr(p, "image_mask", None), {n: getattr(p, n, None) for n in names},
            getattr(opts, "sd_vae_encode_method", None), getattr(opts, "img2img_background_color", None),
            getattr(opts, "img2img_color_correction", None))


def _default(params, name, fallback):
    param = params.get(name)
    return fallback if param is None or param.default is inspect.Parameter.empty else param.default


def _model_identity():
    model = shared.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    return (id(model), getattr(model, "sd_model_hash", None), getattr(info, "filename", None),
            str(getattr(model, "dtype", "")), str(getattr(model, "device", "")))


def _host_options():
    opts = shared.opts
    names = ("skip_early_cond", "s_min_uncond_all", "pad_cond_uncond", "pad_cond_uncond_v0", "batch_cond_uncond",
             "use_old_scheduling", "CLIP_stop_at_last_layers", "sd_vae", "img2img_extra_noise")
    return {n: getattr(opts, n, None) for n in names}


def _prompts(p):
    # Extra-network tags (LoRA) change the model, not the conds: the prompts name them.
    return (getattr(p, "prompts", None), getattr(p, "negative_prompts", None), getattr(p, "prompt", None),
            getattr(p, "negative_prompt", None), getattr(p, "s_min_uncond", None))


def _other_scripts_args(p, run):
    """Every other script's args (ControlNet's units, …): they may change the model calls.
    SEGA's own are left out — they are what an edit changes."""
    args = list(getattr(p, "script_args", None) or [])
    own = getattr(run, "script_args_range", None)
    if own is not None and None not in own:
        del args[own[0]:own[1]]
    return args
