"""The WebUI side of SEGA: everything that knows about AUTOMATIC1111's sampling loop.

Only `sega_webui.host` imports the WebUI (`modules.*`); `steps` and `rows` are plain
torch so they can be tested on their own.
"""
