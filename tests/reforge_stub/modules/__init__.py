"""Stand-in for reForge's `modules` package: the files here are reForge's own versions; every
other `modules.X` comes from the A1111 stand-in (tests/webui_stub/modules), where reForge kept
A1111 1.10.1's code for what the extension touches (README)."""

from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[2] / "webui_stub" / "modules"))
