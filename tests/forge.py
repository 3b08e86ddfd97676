"""Loads the Forge stand-in (tests/forge_stub over tests/webui_stub) and our script into it
(tests/stub_host.py: one stand-in's modules in place at a time)."""

from __future__ import annotations

import stub_host
import webui

STUB = webui.ROOT / "tests" / "forge_stub"


def _imports() -> dict:
    from backend import diffusion_engine, memory_management

    return dict(diffusion_engine=diffusion_engine, memory_management=memory_management)


_loader = stub_host.Loader(STUB, ("modules", "backend", "modules_forge"), _imports)
active, load = _loader.active, _loader.load


class Host(stub_host.Host):
    """txt2img and img2img in the Forge stand-in, with or without SEGA."""

    loader = _loader

    def engine(self, kind: str = "sd1"):
        import host_harness

        if kind not in self.engines:
            self.engines[kind] = self.w.diffusion_engine.ForgeEngine(host_harness.model(kind))
        return self.engines[kind]

    def calls(self, kind: str = "sd1") -> list[int]:
        """The rows of each model call of the last generation on `kind`."""
        return self.engine(kind).forge_objects_original.unet.model.calls
