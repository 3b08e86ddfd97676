"""What ControlNet (Mikubill/sd-webui-controlnet 1.1.455, scripts/hook.py) does to the
model call, on the stand-in's tiny model:

- before sampling it puts one mark token in front of every prompt cond (all values
  +1024) and negative-prompt cond (-1024) — the conds sampling starts with; hires conds
  made later stay unmarked, as in the WebUI, where they do not exist yet then;
- it replaces the UNet's `forward` on the instance; there a call counts as marked only
  when every row's first token is a mark: then the marks are stripped and say per row
  whether it is a cond row, else every row counts as cond and the context is left as is;
- the control goes to every row (Balanced, and softened for "My prompt is more
  important"), or only to cond rows ("ControlNet is more important");
- it registers a cfg_denoiser callback that reads only the step, from which it decides
  whether a unit is inside its guidance start/end (here: the end only).
The control here is a fixed latent added to the UNet's input; the real one adds residuals
inside the UNet. Either way it is per row.
"""

import torch
from modules import script_callbacks

MARK = 1024.0
MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")


def _is_marked(t):
    return bool(((t[..., 0, :].abs() - MARK).abs().mean() < 1e-3).item())


def _mark_cond(cond, positive):
    if isinstance(cond, dict):
        return {**cond, "crossattn": _mark_cond(cond["crossattn"], positive)}
    if _is_marked(cond):
        return cond
    return torch.cat([torch.zeros_like(cond[:1]) + (MARK if positive else -MARK), cond])


def _mark_schedules(schedules, positive):
    for i, entry in enumerate(schedules):
        schedules[i] = entry._replace(cond=_mark_cond(entry.cond, positive))


class ControlNet:
    def __init__(self, mode="Balanced", weight=0.5, seed=7, guidance_end=1.0):
        assert mode in MODES
        self.mode, self.weight, self.guidance_end = mode, weight, guidance_end
        self.percent = 0.0
        self.hint = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        self.unet = None
        self.seen_unmarked = 0

    # -- as a script: hooks set up per generation -----------------------------------------
    def process(self, p):
        from modules import shared

        self.unet = shared.sd_model.unet
        original = self.unet.forward
        self.unet.forward = lambda *a, **k: self.forward(original, *a, **k)
        sample = p.sample

        def marked_sample(*args, **kwargs):
            for parts in p.c.batch:
                for part in parts:
                    _mark_schedules(part.schedules, True)
            for schedules in p.uc:
                _mark_schedules(schedules, False)
            return sample(*args, **kwargs)

        p.sample = marked_sample
        script_callbacks.on_cfg_denoiser(self.guidance_schedule)

    def postprocess(self, p, processed):
        del self.unet.forward
        script_callbacks.remove_callbacks_for_function(self.guidance_schedule)

    def guidance_schedule(self, params):
        self.last_step = params.sampling_step
        self.percent = params.sampling_step / max(params.total_sampling_steps, 1)

    def forward(self, original, sample, timestep, encoder_hidden_states=None, **kwargs):
        context = encoder_hidden_states
        n = sample.shape[0]
        if _is_marked(context):
            cond_mark = (context[:, 0].mean(dim=1) > 0).to(sample.dtype)
            context = context[:, 1:]
        else:
            self.seen_unmarked += 1
            cond_mark = sample.new_ones(n)
        control = torch.nn.functional.interpolate(self.hint, size=sample.shape[-2:]).to(sample) * self.weight
        if self.percent > self.guidance_end:  # the unit's guidance has stopped
            control = control * 0
        if self.mode == "My prompt is more important":
            control = control * 0.825 ** 4
        control = control.expand(n, -1, -1, -1)
        if self.mode == "ControlNet is more important":
            control = control * cond_mark.view(n, 1, 1, 1)
        return original(sample + control, timestep, encoder_hidden_states=context, **kwargs)
