"""modules/processing.py as reForge has it: the A1111 stand-in's processing with reForge's
order around sampling — `sd_model.forge_objects` is reset from
`forge_objects_after_applying_lora` right before every `process_before_every_sampling`
(txt2img `sample`, img2img `sample`, `sample_hr_pass`), so an extension's UNet clone lives
for one pass; the hires pass resets and calls `process_before_every_sampling` ONCE (Forge:
twice), after the hires conds are made; `p.modified_noise`, when a script sets it there,
replaces the pass's noise; the hires pass samples at `hr_cfg` (0 = the UI's default: the
first pass's `cfg_scale`; reForge's API default is 1.0); the batches run under
`torch.inference_mode` (process_images_inner). Not mirrored: the per-batch reset from
`forge_objects_original` before `before_process_batch` (the pre-sampling reset supersedes it
for the UNet), `before_hr`, token merging, zero-terminal-SNR sigmas."""

from pathlib import Path

import torch

_A1111 = Path(__file__).resolve().parents[2] / "webui_stub" / "modules" / "processing.py"
_SOURCE = _A1111.read_text()
assert _SOURCE.count("with torch.no_grad():") == 1
exec(compile(_SOURCE.replace("with torch.no_grad():", "with torch.inference_mode():"), str(_A1111), "exec"),  # noqa: S102
     globals())


def _reset_forge_objects():
    model = shared.sd_model  # noqa: F821
    model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()


def _take_modified_noise(p, noise):
    modified = getattr(p, "modified_noise", None)
    p.modified_noise = None
    return noise if modified is None else modified


def _txt2img_sample(self, batch_index):
    self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)  # noqa: F821
    x = self.noise((self.batch_size, getattr(shared.sd_model, "latent_channels", 4), self.height // 8,  # noqa: F821
                    self.width // 8), batch_index)
    _reset_forge_objects()
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=x, noise=x, c=self.c, uc=self.uc)
    x = _take_modified_noise(self, x)
    image_cond = txt2img_image_conditioning(shared.sd_model, x, self.width, self.height)  # noqa: F821
    samples = self.sampler.sample(self, x, self.c, self.uc, image_conditioning=image_cond)
    if not self.enable_hr:
        return samples
    sd_models.reload_model_weights(info=self.hr_checkpoint_info)  # noqa: F821
    return self.sample_hr_pass(samples, batch_index)


def _sample_hr_pass(self, samples, batch_index):
    self.is_hr_pass = True
    self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)  # noqa: F821
    samples = torch.nn.functional.interpolate(samples, size=(self.hr_upscale_to_y // 8, self.hr_upscale_to_x // 8),
                                              mode="nearest")
    image_cond = txt2img_image_conditioning(shared.sd_model, samples, self.hr_upscale_to_x, self.hr_upscale_to_y)  # noqa: F821
    noise = self.noise(samples.shape, 1000 + batch_index)
    self.calculate_hr_conds()
    _reset_forge_objects()
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
    noise = _take_modified_noise(self, noise)
    samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                          steps=self.hr_second_pass_steps or self.steps, image_conditioning=image_cond)
    self.sampler = None
    self.is_hr_pass = False
    return samples


_a1111_txt2img_init = StableDiffusionProcessingTxt2Img.__init__  # noqa: F821
_a1111_calculate_hr_conds = StableDiffusionProcessingTxt2Img.calculate_hr_conds  # noqa: F821


def _txt2img_init(self, *args, hr_cfg=0.0, **kwargs):
    _a1111_txt2img_init(self, *args, **kwargs)
    self.hr_cfg = hr_cfg


def _calculate_hr_conds(self):
    if self.hr_c is None and self.enable_hr and self.hr_cfg == 0:
        self.hr_cfg = self.cfg_scale
        self.extra_generation_params["Hires CFG Scale"] = self.cfg_scale
    _a1111_calculate_hr_conds(self)


def _img2img_sample(self, batch_index):
    x = self.noise(self.init_latent.shape, batch_index)
    _reset_forge_objects()
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=self.c, uc=self.uc)
    x = _take_modified_noise(self, x)
    samples = self.sampler.sample_img2img(self, self.init_latent, x, self.c, self.uc,
                                          image_conditioning=self.image_conditioning)
    if self.mask is not None:
        blended = samples * self.nmask + self.init_latent * self.mask
        if self.scripts is not None:
            mba = MaskBlendArgs(samples, self.nmask, self.init_latent, self.mask, blended)  # noqa: F821
            self.scripts.on_mask_blend(self, mba)
            blended = mba.blended_latent
        samples = blended
    return samples


StableDiffusionProcessingTxt2Img.__init__ = _txt2img_init  # noqa: F821
StableDiffusionProcessingTxt2Img.calculate_hr_conds = _calculate_hr_conds  # noqa: F821
StableDiffusionProcessingTxt2Img.sample = _txt2img_sample  # noqa: F821
StableDiffusionProcessingTxt2Img.sample_hr_pass = _sample_hr_pass  # noqa: F821
StableDiffusionProcessingImg2Img.sample = _img2img_sample  # noqa: F821
