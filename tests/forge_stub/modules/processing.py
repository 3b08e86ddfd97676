"""modules/processing.py as Forge has it: the A1111 stand-in's processing, with Forge's
order around sampling — `sd_model.forge_objects` is reset from
`forge_objects_after_applying_lora` before every `process_before_every_sampling` (so an
extension's UNet clone lives for one pass), and the hires pass calls
`process_before_every_sampling` twice: once before the reset (after `before_hr`), once
after it (processing.py `sample_hr_pass`); the batches run under `torch.inference_mode`."""

from pathlib import Path

import torch

_A1111 = Path(__file__).resolve().parents[2] / "webui_stub" / "modules" / "processing.py"
# Forge runs the batches under torch.inference_mode (process_images_inner), A1111 under no_grad:
# tensors made while sampling cannot be updated in place after it.
_SOURCE = _A1111.read_text()
assert _SOURCE.count("with torch.no_grad():") == 1
exec(compile(_SOURCE.replace("with torch.no_grad():", "with torch.inference_mode():"), str(_A1111), "exec"),  # noqa: S102
     globals())


def _reset_forge_objects():
    model = shared.sd_model  # noqa: F821
    model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()


def _txt2img_sample(self, batch_index):
    self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)  # noqa: F821
    b = self.batch_size
    x = self.noise((b, getattr(shared.sd_model, "latent_channels", 4), self.height // 8, self.width // 8), batch_index)  # noqa: F821
    image_cond = txt2img_image_conditioning(shared.sd_model, x, self.width, self.height)  # noqa: F821
    _reset_forge_objects()
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=x, noise=x, c=self.c, uc=self.uc)
    samples = self.sampler.sample(self, x, self.c, self.uc, image_conditioning=image_cond)
    if not self.enable_hr:
        return samples
    self.is_hr_pass = True
    samples = torch.nn.functional.interpolate(samples, size=(self.hr_upscale_to_y // 8, self.hr_upscale_to_x // 8),
                                              mode="nearest")
    noise = self.noise(samples.shape, 1000 + batch_index)
    self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)  # noqa: F821
    hr_steps = self.hr_second_pass_steps or self.steps
    self.calculate_hr_conds()
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
    _reset_forge_objects()
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
    hr_cond = txt2img_image_conditioning(shared.sd_model, samples, self.hr_upscale_to_x, self.hr_upscale_to_y)  # noqa: F821
    samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc, steps=hr_steps,
                                          image_conditioning=hr_cond)
    self.sampler = None
    self.is_hr_pass = False
    return samples


_a1111_img2img_sample = StableDiffusionProcessingImg2Img.sample  # noqa: F821


def _img2img_sample(self, batch_index):
    _reset_forge_objects()
    return _a1111_img2img_sample(self, batch_index)


# Forge encodes no negative prompt at CFG scale 1 (setup_conds: `self.uc = None`), nor for
# the hires pass at Hires CFG Scale 1 (calculate_hr_conds: `self.hr_uc = None`; the API's
# default `hr_cfg` is 1.0); its CFG denoiser uses `hr_cfg` in the hires pass.
_a1111_setup_conds = StableDiffusionProcessing.setup_conds  # noqa: F821
_a1111_hr_conds = StableDiffusionProcessingTxt2Img.calculate_hr_conds  # noqa: F821


def _setup_conds(self):
    _a1111_setup_conds(self)
    if self.cfg_scale == 1:
        self.uc = None


def _calculate_hr_conds(self):
    _a1111_hr_conds(self)
    if self.hr_cfg == 1:
        self.hr_uc = None


StableDiffusionProcessing.setup_conds = _setup_conds  # noqa: F821
StableDiffusionProcessingTxt2Img.calculate_hr_conds = _calculate_hr_conds  # noqa: F821
StableDiffusionProcessingTxt2Img.hr_cfg = 1.0  # noqa: F821
StableDiffusionProcessingTxt2Img.sample = _txt2img_sample  # noqa: F821
StableDiffusionProcessingImg2Img.sample = _img2img_sample  # noqa: F821
