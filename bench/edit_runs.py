"""The runs both photo-editing benchmarks time — bench/edit.py in the WebUI stand-in and
`bench/forge.py --flux-edit` in Forge's: plain img2img, img2img with SEGA (1 concept), a
first edit (inversion, then sampling) and a second edit of the same photo from the cache."""

from __future__ import annotations

import host_harness

PLAIN, SEGA, FIRST, AGAIN = ("plain img2img", "img2img with SEGA (1 concept)", "edit, first (inverts)",
                             "edit, again (cached)")


def runs(host, edit, **common) -> dict:
    """name → a generation in `host` (its `generate(values, **common)`); `edit`: the stand-in's
    sega_webui.edit, whose cache the first edit empties."""
    concept = host_harness.sega_values("smiling, smile", warmup="2")
    editing = host_harness.sega_values("smiling, smile", warmup="2", invert=True)
    return {
        PLAIN: lambda: host.generate(None, **common),
        SEGA: lambda: host.generate(concept, **common),
        FIRST: lambda: (edit.clear_cache(), host.generate(editing, **common)),
        AGAIN: lambda: host.generate(editing, **common),
    }
