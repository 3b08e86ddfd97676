"""modules/processing.py: a txt2img processing object and process_images with the hook
order of WebUI 1.10.1 (before_process, process, per batch: before_process_batch, process_batch,
process_before_every_sampling for the first pass and again for the hires pass,
postprocess_batch, the batch's infotexts; then postprocess). Images are latents; an
image's infotext is the generation parameters as they were when it was written."""

import numpy as np
import torch
from PIL import Image

from modules import infotext_utils, prompt_parser, sd_samplers, shared


class Processed:
    def __init__(self, p, images, comments, infotexts=None, index_of_first_image=0):
        self.images = images
        self.comments = comments
        self.extra_generation_params = dict(p.extra_generation_params)
        self.infotexts = infotexts or []
        self.info = self.infotexts[0] if self.infotexts else ""
        self.index_of_first_image = index_of_first_image


class StableDiffusionProcessingTxt2Img:
    def __init__(self, prompt="", negative_prompt="", steps=20, cfg_scale=7.0, width=64, height=64, batch_size=1,
                 n_iter=1, sampler_name="Euler", seed=0, enable_hr=False, hr_scale=2.0, hr_second_pass_steps=0,
                 denoising_strength=0.5, script_args=(), scripts=None, s_min_uncond=0.0, **extra):
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.steps, self.cfg_scale = steps, cfg_scale
        self.width, self.height = width, height
        self.batch_size, self.n_iter = batch_size, n_iter
        self.sampler_name, self.seed = sampler_name, seed
        self.enable_hr, self.hr_scale, self.hr_second_pass_steps = enable_hr, hr_scale, hr_second_pass_steps
        self.denoising_strength = denoising_strength
        self.hr_upscale_to_x, self.hr_upscale_to_y = int(width * hr_scale), int(height * hr_scale)
        self.script_args = list(script_args)
        self.scripts = scripts
        self.s_min_uncond = s_min_uncond
        self.extra_generation_params = {}
        self.comments = {}
        self.is_hr_pass = False
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
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return self._conds(self.width, self.height, self.firstpass_steps)

    def noise(self, shape, batch_index):
        g = torch.Generator().manual_seed(self.seed + batch_index)
        return torch.randn(shape, generator=g).to(shared.device)

    def sample(self, batch_index):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)
        b = self.batch_size
        x = self.noise((b, 4, self.height // 8, self.width // 8), batch_index)
        image_cond = x.new_zeros(b, 5, 1, 1)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=self.c, uc=self.uc)
        samples = self.sampler.sample(self, x, self.c, self.uc, image_conditioning=image_cond)
        if not self.enable_hr:
            return samples
        self.is_hr_pass = True
        samples = torch.nn.functional.interpolate(samples, size=(self.hr_upscale_to_y // 8, self.hr_upscale_to_x // 8),
                                                  mode="nearest")
        noise = self.noise(samples.shape, 1000 + batch_index)
        self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)
        hr_steps = self.hr_second_pass_steps or self.steps
        total = self.sampler.config.total_steps(hr_steps)
        self.hr_c, self.hr_uc = self._conds(self.hr_upscale_to_x, self.hr_upscale_to_y, self.firstpass_steps, total)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc, steps=hr_steps,
                                              image_conditioning=samples.new_zeros(b, 5, 1, 1))
        self.sampler = None
        self.is_hr_pass = False
        return samples


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    shared.state.reset()
    torch.manual_seed(p.seed)  # the stand-in's stochastic samplers draw from the global RNG
    p.prompts = [p.prompt] * p.batch_size
    p.infotexts = []
    p.all_prompts = [p.prompt] * (p.batch_size * p.n_iter)
    p.all_seeds = [p.seed + k for k in range(p.batch_size * p.n_iter)]
    p.negative_prompts = [p.negative_prompt] * p.batch_size
    if p.scripts is not None:
        p.scripts.process(p)
    images = []
    with torch.no_grad():
        p.setup_conds()
        for n in range(p.n_iter):
            if shared.state.interrupted:
                break
            p.iteration = n
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n)
                p.scripts.process_batch(p, batch_number=n)
            samples = p.sample(n)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, samples, batch_number=n)
            # The batch's generation parameters are taken here, after postprocess_batch, as
            # the WebUI writes each image's infotext then.
            p.infotexts.extend([dict(p.extra_generation_params)] * samples.shape[0])
            images.append(samples)
    if getattr(p, "pil_images", False):
        res = _processed_pictures(p, images)
    else:
        res = Processed(p, torch.cat(images) if images else None, dict(p.comments), p.infotexts)
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
