"""ComfyUI's `comfy` package and reForge's `ldm_patched.modules` are one code base under two
names (reForge copied ComfyUI's); where the reForge stand-in already mirrors a file that
ComfyUI 0.8.0 has alike, this stand-in runs that file under ComfyUI's name instead of a copy."""

from pathlib import Path

REFORGE = Path(__file__).resolve().parents[2] / "reforge_stub" / "ldm_patched"


def reuse(relative: str, namespace: dict, replace: dict | None = None) -> None:
    """Run the reForge stand-in's file `relative` in `namespace` (a module's globals), its
    imports renamed to ComfyUI's and the lines in `replace` (reForge's own) swapped."""
    path = REFORGE / relative
    source = path.read_text().replace("ldm_patched.modules", "comfy").replace("ldm_patched.ldm", "comfy.ldm")
    for old, new in (replace or {}).items():
        assert old in source, old
        source = source.replace(old, new)
    exec(compile(source, str(path), "exec"), namespace)
