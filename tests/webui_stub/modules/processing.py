"""modules/processing.py: txt2img and img2img processing objects and process_images with the
hook order of WebUI 1.10.1 (before_process, process, init, per batch: before_process_batch,
process_batch, process_before_every_sampling for the first pass and again for the hires
pass, postprocess_batch, the batch's infotexts; then postprocess). Images are latents: an
img2img init image is a latent, its mask a [h, w] tensor at latent resolution (1 = repaint);
an image's infotext is the generation parameters as they were when it was written."""

import numpy as np
import torch
from PIL import Image

from modules import infotext_utils, prompt_parser, sd_models, sd_samplers, shared
from modules.scripts import MaskBlendArgs

# The WebUI encodes an init image by sampling the VAE's posterior with the global torch RNG,
# whose state is whatever the previous request left: the same picture gives latents that
# differ slightly per request. Off (0) unless a test sets it; the generator is never reset.
VAE_POSTERIOR_STD = 0.0
_posterior = torch.Generator().manual_seed(4321)


def encode(image):
    if VAE_POSTERIOR_STD <= 0:
        return image
    return image + VAE_POSTERIOR_STD * torch.randn(image.shape, generator=_posterior).to(image)


class Processed:
    def __init__(self, p, images, comments, infotexts=None, index_of_first_image=0, samples=None):
        self.images = images
        self.samples = images if samples is None else samples  # before paste-back and overlay
        self.comments = comments
        self.extra_generation_params = dict(p.extra_generation_params)
        self.infotexts = infotexts or []
        self.info = self.infotexts[0] if self.infotexts else ""
        self.index_of_first_image = index_of_first_image


def txt2img_image_conditioning(sd_model, x, width, height):
    if sd_model.model.conditioning_key in {"hybrid", "concat"}:
        # An inpainting model sees "everything masked": a mask of ones and a blank image.
        blank = x.new_zeros(x.shape[0], 4, height // 8, width // 8)
        return torch.cat([x.new_ones(x.shape[0], 1, height // 8, width // 8), blank], dim=1)
    return x.new_zeros(x.shape[0], 5, 1, 1)


class StableDiffusionProcessing:
    def __init__(self, prompt="", negative_prompt="", steps=20, cfg_scale=7.0, width=64, height=64, batch_size=1,
                 n_iter=1, sampler_name="Euler", seed=0, denoising_strength=0.5, script_args=(), scripts=None,
                 s_min_uncond=0.0, refiner_checkpoint=None, refiner_switch_at=None, **extra):
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.steps, self.cfg_scale = steps, cfg_scale
        self.width, self.height = width, height
        self.batch_size, self.n_iter = batch_size, n_iter
        self.sampler_name, self.seed = sampler_name, seed
        self.denoising_strength = denoising_strength
        self.script_args = list(script_args)
        self.scripts = scripts
        self.s_min_uncond = s_min_uncond
        self.eta = None
        self.refiner_checkpoint, self.refiner_switch_at = refiner_checkpoint, refiner_switch_at
        self.refiner_checkpoint_info = None
        self.extra_generation_params = {}
        self.comments = {}
        self.is_hr_pass = False
        self.enable_hr = False
        self.is_api = False
        self.sampler = None
        self.sd_model = shared.sd_model
        self.image_cfg_scale = None
        self.do_not_save_samples = False
        self.outpath_samples = "outputs/txt2img-images"
        for k, v in extra.items():
            setattr(self, k, v)

    def save_samples(self):
        return shared.opts.samples_save and not self.do_not_save_samples

    def comment(self, text):
        self.comments[text] = 1

    def _conds(self, width, height, steps, hires_steps=None):
        prompts = prompt_parser.SdConditioning(self.prompts, width=width, height=height)
        negatives = prompt_parser.SdConditioning(self.negative_prompts, width=width, height=height, is_negative_prompt=True)
        # As get_conds_with_caching calls them: both optional arguments, positionally.
        old = shared.opts.use_old_scheduling
        c = prompt_parser.get_multicond_learned_conditioning(shared.sd_model, prompts, steps, hires_steps, old)
        uc = prompt_parser.get_learned_conditioning(shared.sd_model, negatives, steps, hires_steps, old)
        return c, uc

    def setup_conds(self):
        config = sd_samplers.find_sampler_config(self.sampler_name)
        self.firstpass_steps = config.total_steps(self.steps)
        self.c, self.uc = self._conds(self.width, self.height, self.firstpass_steps)

    def get_conds(self):
        return self.c, self.uc

    def noise(self, shape, batch_index):
        g = torch.Generator().manual_seed(self.seed + batch_index)
        return torch.randn(shape, generator=g).to(shared.device)

    def init(self):
        pass

    def finish(self, samples):
        """What becomes of the samples after decoding (here: nothing)."""
        return samples


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, hr_scale=2.0, hr_second_pass_steps=0, width=64, height=64, **kwargs):
        super().__init__(width=width, height=height, **kwargs)
        self.enable_hr, self.hr_scale, self.hr_second_pass_steps = enable_hr, hr_scale, hr_second_pass_steps
        self.hr_upscale_to_x, self.hr_upscale_to_y = int(width * hr_scale), int(height * hr_scale)
        self.hr_checkpoint_info = None
        self.hr_c = self.hr_uc = None

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        config = sd_samplers.find_sampler_config(self.sampler_name)
        total = config.total_steps(self.hr_second_pass_steps or self.steps)
        self.hr_c, self.hr_uc = self._conds(self.hr_upscale_to_x, self.hr_upscale_to_y, self.firstpass_steps, total)

    def setup_conds(self):
        if self.is_hr_pass:  # called by the refiner in the hires pass
            self.hr_c = None
            self.calculate_hr_conds()
            return
        super().setup_conds()
        self.hr_c = self.hr_uc = None

    def get_conds(self):
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return super().get_conds()

    def sample(self, batch_index):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)
        b = self.batch_size
        channels = getattr(shared.sd_model, "latent_channels", 4)
        x = self.noise((b, channels, self.height // 8, self.width // 8), batch_index)
        image_cond = txt2img_image_conditioning(shared.sd_model, x, self.width, self.height)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=self.c, uc=self.uc)
        samples = self.sampler.sample(self, x, self.c, self.uc, image_conditioning=image_cond)
        if not self.enable_hr:
            return samples
        # Back to the selected checkpoint, should the refiner have switched in the first pass.
        sd_models.reload_model_weights(info=self.hr_checkpoint_info)
        self.is_hr_pass = True
        samples = torch.nn.functional.interpolate(samples, size=(self.hr_upscale_to_y // 8, self.hr_upscale_to_x // 8),
                                                  mode="nearest")
        noise = self.noise(samples.shape, 1000 + batch_index)
        self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)
        hr_steps = self.hr_second_pass_steps or self.steps
        self.calculate_hr_conds()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        hr_cond = txt2img_image_conditioning(shared.sd_model, samples, self.hr_upscale_to_x, self.hr_upscale_to_y)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc, steps=hr_steps,
                                              image_conditioning=hr_cond)
        self.sampler = None
        self.is_hr_pass = False
        return samples


def _gaussian_blur_1d(mask, radius, dim):
    # The WebUI blurs its mask with cv2.GaussianBlur, kernel 2·int(2.5·r + 0.5) + 1, sigma r.
    size = 2 * int(2.5 * radius + 0.5) + 1
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-0.5 * (offsets / radius) ** 2)
    kernel = kernel / kernel.sum()
    m = mask[None, None]
    shape = (1, 1, size, 1) if dim == 0 else (1, 1, 1, size)
    pad = (0, 0, size // 2, size // 2) if dim == 0 else (size // 2, size // 2, 0, 0)
    m = torch.nn.functional.pad(m, pad, mode="reflect" if min(mask.shape) > size // 2 else "replicate")
    return torch.nn.functional.conv2d(m, kernel.view(shape))[0, 0]


def _crop_region(mask, pad, width, height):
    """Bounding box of the mask, padded, widened to the processing aspect ratio and moved
    inside the image (masking.get_crop_region_v2 + expand_crop_region)."""
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if len(ys) == 0:
        return None
    h, w = mask.shape
    x1, y1 = max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0)
    x2, y2 = min(int(xs.max()) + 1 + pad, w), min(int(ys.max()) + 1 + pad, h)

    def widen(a, b, want, limit):
        a -= (want - (b - a)) // 2
        b = a + want
        if b > limit:
            a, b = a - (b - limit), limit
        if a < 0:
            a, b = 0, b - a
        return a, min(b, limit)

    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = widen(y1, y2, int((x2 - x1) * height / width), h)
    else:
        x1, x2 = widen(x1, x2, int((y2 - y1) * width / height), w)
    return x1, y1, x2, y2


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img, sketch and inpainting. `init_images`: a latent [N, 4, h, w] (N = 1 or the batch
    size); `mask`: [h, w] in [0, 1] at the init latent's resolution, 1 where it is repainted."""

    def __init__(self, init_images=None, denoising_strength=0.75, mask=None, mask_blur=0, mask_round=True,
                 inpainting_fill=1, inpaint_full_res=False, inpaint_full_res_padding=0, inpainting_mask_invert=0,
                 inpainting_mask_weight=1.0, **kwargs):
        super().__init__(denoising_strength=denoising_strength, **kwargs)
        self.init_images = init_images
        self.image_mask = mask
        self.mask = None
        self.nmask = None
        self.mask_blur = mask_blur
        self.mask_round = mask_round
        self.inpainting_fill = inpainting_fill
        self.inpaint_full_res = inpaint_full_res
        self.inpaint_full_res_padding = inpaint_full_res_padding
        self.inpainting_mask_invert = inpainting_mask_invert
        self.inpainting_mask_weight = inpainting_mask_weight
        self.paste_to = None
        self.mask_for_overlay = None
        self.init_latent = None
        self.image_conditioning = None

    def init(self):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.image_cfg_scale = self.image_cfg_scale if shared.sd_model.cond_stage_key == "edit" else None
        self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)
        image = encode(self.init_images.to(shared.device, torch.float32))
        image_mask = self.image_mask
        if image_mask is not None:
            image_mask = image_mask.float()
            if self.inpainting_mask_invert:
                image_mask = 1.0 - image_mask
            if self.mask_blur > 0:
                image_mask = _gaussian_blur_1d(_gaussian_blur_1d(image_mask, self.mask_blur, 1), self.mask_blur, 0)
            if self.inpaint_full_res:
                self.mask_for_overlay = image_mask
                region = _crop_region(image_mask, self.inpaint_full_res_padding, self.width, self.height)
                x1, y1, x2, y2 = region
                self.paste_to = region
                self.original = image
                size = (self.height // 8, self.width // 8)
                image_mask = torch.nn.functional.interpolate(image_mask[None, None, y1:y2, x1:x2], size=size, mode="bilinear")[0, 0]
                image = torch.nn.functional.interpolate(image[:, :, y1:y2, x1:x2], size=size, mode="bilinear")
                self.extra_generation_params["Inpaint area"] = "Only masked"
            else:
                self.mask_for_overlay = torch.clamp(image_mask * 2, 0, 1)
                self.original = image
        if image.shape[0] == 1:
            image = image.repeat(self.batch_size, 1, 1, 1)
        self.init_latent = image
        if image_mask is not None:
            latmask = torch.round(image_mask) if self.mask_round else image_mask
            latmask = latmask[None].expand(image.shape[1], -1, -1)
            self.mask = (1.0 - latmask).to(shared.device)
            self.nmask = latmask.to(shared.device)
            if self.inpainting_fill == 3:  # "latent nothing"
                self.init_latent = self.init_latent * self.mask
        self.image_conditioning = self.img2img_image_conditioning(image, image_mask)

    def img2img_image_conditioning(self, image, image_mask):
        if shared.sd_model.model.conditioning_key not in {"hybrid", "concat"}:
            return image.new_zeros(image.shape[0], 5, 1, 1)
        # processing.inpainting_image_conditioning: the rounded mask, and the image with the
        # masked part taken out (by inpainting_mask_weight), "encoded" (here: already latent).
        mask = image.new_ones(1, 1, *image.shape[-2:]) if image_mask is None else torch.round(image_mask)[None, None]
        masked = torch.lerp(image, image * (1.0 - mask), self.inpainting_mask_weight)
        return torch.cat([mask.expand(image.shape[0], -1, -1, -1), masked], dim=1)

    def sample(self, batch_index):
        x = self.noise(self.init_latent.shape, batch_index)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=self.c, uc=self.uc)
        samples = self.sampler.sample_img2img(self, self.init_latent, x, self.c, self.uc,
                                              image_conditioning=self.image_conditioning)
        if self.mask is not None:
            blended = samples * self.nmask + self.init_latent * self.mask
            if self.scripts is not None:
                mba = MaskBlendArgs(samples, self.nmask, self.init_latent, self.mask, blended)
                self.scripts.on_mask_blend(self, mba)
                blended = mba.blended_latent
            samples = blended
        return samples

    def finish(self, samples):
        """apply_overlay: paste a crop back into the original, then the original over the
        part the mask keeps (the WebUI does this on decoded pixels)."""
        if self.mask_for_overlay is None:
            return samples
        original = self.original.repeat(samples.shape[0] // self.original.shape[0], 1, 1, 1)
        if self.paste_to is not None:
            x1, y1, x2, y2 = self.paste_to
            canvas = original.clone()
            canvas[:, :, y1:y2, x1:x2] = torch.nn.functional.interpolate(samples, size=(y2 - y1, x2 - x1), mode="bilinear")
            samples = canvas
        m = self.mask_for_overlay
        return samples * m + original * (1 - m)


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    sd_models.reload_model_weights()  # the selected checkpoint, should a refiner have stayed loaded
    if p.refiner_checkpoint not in (None, "", "None", "none"):
        p.refiner_checkpoint_info = sd_models.get_closet_checkpoint_match(p.refiner_checkpoint)
        if p.refiner_checkpoint_info is None:
            raise Exception(f"Could not find checkpoint with name {p.refiner_checkpoint}")
    shared.state.reset()
    torch.manual_seed(p.seed)  # the stand-in's stochastic samplers draw from the global RNG
    p.prompts = [p.prompt] * p.batch_size
    p.infotexts = []
    p.all_prompts = [p.prompt] * (p.batch_size * p.n_iter)
    p.all_seeds = [p.seed + k for k in range(p.batch_size * p.n_iter)]
    p.negative_prompts = [p.negative_prompt] * p.batch_size
    if p.scripts is not None:
        p.scripts.process(p)
    samples = []
    with torch.no_grad():
        p.init()
        for n in range(p.n_iter):
            if shared.state.skipped:  # Skip ends one batch; the next one runs
                shared.state.skipped = False
            if shared.state.interrupted:
                break
            p.iteration = n
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            sd_models.reload_model_weights()  # the refiner may have switched in the last batch
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n)
                p.scripts.process_batch(p, batch_number=n)
            p.setup_conds()
            batch = p.sample(n)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, batch, batch_number=n)
            # The batch's generation parameters are taken here, after postprocess_batch, as
            # the WebUI writes each image's infotext then.
            p.infotexts.extend([dict(p.extra_generation_params)] * batch.shape[0])
            samples.append(batch)
    if getattr(p, "pil_images", False):
        res = _processed_pictures(p, [p.finish(batch) for batch in samples])
    else:
        samples = torch.cat(samples) if samples else None
        finished = p.finish(samples) if samples is not None else None
        res = Processed(p, finished, dict(p.comments), p.infotexts, samples=samples)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res


def _picture(latent):
    """A stand-in for the VAE: the first three latent channels as RGB, each latent pixel
    an 8×8 block, so equal latents give equal pictures."""
    rgb = torch.sigmoid(latent[:3].float()).mul(255).round().to(torch.uint8)
    array = np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()).repeat(8, 0).repeat(8, 1)
    return Image.fromarray(array, "RGB")


def _processed_pictures(p, batches):
    """What the WebUI hands `postprocess` (opts.return_grid as in 1.10.1): PIL images, one
    infotext each, and, for several images, a grid in front with index_of_first_image 1."""
    pictures, infotexts = [], []
    for n, batch in enumerate(batches):
        for i, latent in enumerate(batch):
            params = {"Steps": p.steps, "Sampler": p.sampler_name, "Seed": p.all_seeds[n * p.batch_size + i],
                      **p.infotexts[n * p.batch_size + i]}
            text = infotext_utils.create_infotext(p.prompt, p.negative_prompt, params)
            picture = _picture(latent)
            picture.info["parameters"] = text
            pictures.append(picture)
            infotexts.append(text)
    first = 0
    if len(pictures) > 1 and shared.opts.return_grid:
        w, h = pictures[0].size
        grid = Image.new("RGB", (w * p.batch_size, h * ((len(pictures) + p.batch_size - 1) // p.batch_size)))
        for k, picture in enumerate(pictures):
            grid.paste(picture, ((k % p.batch_size) * w, (k // p.batch_size) * h))
        pictures.insert(0, grid)
        infotexts.insert(0, infotexts[0])
        first = 1
    return Processed(p, pictures, dict(p.comments), infotexts, first)
