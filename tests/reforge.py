"""Loads the reForge stand-in (tests/reforge_stub over tests/webui_stub) and our script into it
(tests/stub_host.py: one stand-in's modules in place at a time). A `backend` package (Forge's)
is taken out too while reForge is in place: reForge has none."""

from __future__ import annotations

import stub_host
import webui

STUB = webui.ROOT / "tests" / "reforge_stub"


def _imports() -> dict:
    import ldm_patched.modules.model_management as model_management
    import ldm_patched.modules.patcher_extension as patcher_extension
    import ldm_patched.modules.samplers as samplers
    from modules import prompt_parser
    from modules_forge import forge_loader, forge_sampler

    import sega_webui.hosts as hosts

    return dict(hosts=hosts, prompt_parser=prompt_parser, samplers=samplers, patcher_extension=patcher_extension,
                model_management=model_management, forge_loader=forge_loader, forge_sampler=forge_sampler)


_loader = stub_host.Loader(STUB, ("modules", "ldm_patched", "modules_forge", "backend"), _imports)
active, load = _loader.active, _loader.load


class Host(stub_host.Host):
    """txt2img and img2img in the reForge stand-in, with or without SEGA."""

    loader = _loader

    def model(self, kind: str = "sd1"):
        """`p.sd_model` for `kind`: the A1111 stand-in's tiny model of that kind (a shallow copy:
        same weights) with reForge's `forge_objects`."""
        import host_harness

        if kind not in self.engines:
            self.engines[kind] = self.w.forge_loader.load_model_for_a1111(host_harness.model(kind))
        return self.engines[kind]

    engine = model  # stub_host.Host's name

    def unet(self, kind: str = "sd1"):
        """The pristine UnetPatcher (`forge_objects_original.unet`)."""
        return self.model(kind).forge_objects_original.unet

    def calls(self, kind: str = "sd1") -> list[int]:
        """The rows of each model call of the last generation on `kind`."""
        return self.unet(kind).model.calls

    def timesteps(self, kind: str = "sd1") -> list:
        """The timestep tensor of each model call of the last generation on `kind`."""
        return self.unet(kind).model.timesteps

    def clear_records(self, kind: str) -> None:
        self.calls(kind).clear()
        self.timesteps(kind).clear()
