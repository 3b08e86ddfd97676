"""ComfyUI's `comfy` package and reForge's `ldm_patched.modules` are one code base under two
names (reForge copied ComfyUI's); where the reForge stand-in already mirrors a file that
ComfyUI 0.8.0 has alike, this stand-in runs that file under ComfyUI's name instead of a copy."""

from pathlib import Path

REFORGE = Path(__file__).resolve().parents[2] / "reforge_stub" / "ldm_patched"


def reuse(relative: str, namespace: dict) -> None:
    path = REFORGE / relative
    source = path.read_text().replace("ldm_patched.modules", "comfy").replace("ldm_patched.ldm", "comfy.ldm")
    exec(compile(source, str(path), "exec"), namespace)
