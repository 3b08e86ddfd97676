"""SEGA as a ComfyUI node pack (ComfyUI 0.8.0; ../shared/docs/comfy-contract.md): the
fourth host beside the WebUI family (`sega_webui/`). Imports `comfy` only where it runs,
so the package imports (and is tested) without ComfyUI."""
