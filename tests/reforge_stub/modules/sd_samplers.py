"""modules/sd_samplers.py: the A1111 stand-in's sampler registry, k-diffusion samplers only
(reForge's DDIM/PLMS/UniPC, which reach the same CFG denoiser through
`classic_ddim_eps_estimation`, are not mirrored)."""

from pathlib import Path

_A1111 = Path(__file__).resolve().parents[2] / "webui_stub" / "modules" / "sd_samplers.py"
exec(compile(_A1111.read_text(), str(_A1111), "exec"), globals())  # noqa: S102 - the A1111 stand-in's registry

_K_DIFFUSION = {name for name, _, _ in sd_samplers_kdiffusion.samplers_k_diffusion}  # noqa: F821
all_samplers = [s for s in all_samplers if s.name in _K_DIFFUSION]  # noqa: F821
all_samplers_map = {x.name: x for x in all_samplers}
