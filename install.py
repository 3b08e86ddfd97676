"""Run by the WebUI at start-up. SEGA needs only torch, numpy, gradio and pillow, which the
WebUI already provides, so nothing is installed; we only warn about WebUIs too old for us."""

import re

MIN_VERSION = (1, 10, 0)  # process_before_every_sampling, which SEGA needs, arrived in 1.10


def _webui_version():
    try:
        import launch  # the WebUI's own module, on PYTHONPATH when install.py runs

        tag = launch.git_tag()
    except Exception:
        return None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", tag or "")
    return tuple(int(x or 0) for x in m.groups()) if m else None


version = _webui_version()
if version is not None and version < MIN_VERSION:
    print(
        f"[SEGA] WebUI {'.'.join(map(str, version))} is older than "
        f"{'.'.join(map(str, MIN_VERSION))}; SEGA needs WebUI 1.10 or newer and stays off on this one."
    )
