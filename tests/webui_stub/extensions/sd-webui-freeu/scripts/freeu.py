"""What FreeU (ljleb/sd-webui-freeu, lib_free_u/unet.py) does to the model call: it
rescales the UNet's output-block features per row and channel (the real one patches the
concatenation of skip features; here a forward hook on the up blocks), and counts its
steps in an after-CFG callback. Nothing depends on the number or order of rows.
"""

from modules import script_callbacks


class FreeU:
    def __init__(self, backbone=1.2):
        self.backbone = backbone
        self.handles = []
        self.steps = 0

    def process(self, p):
        from modules import shared

        for block in shared.sd_model.unet.up_blocks:
            self.handles.append(block.register_forward_hook(self._scale))
        script_callbacks.on_cfg_after_cfg(self._count)

    def postprocess(self, p, processed):
        for h in self.handles:
            h.remove()
        self.handles = []
        script_callbacks.remove_callbacks_for_function(self._count)

    def _scale(self, module, args, out):
        half = out.shape[1] // 2
        out = out.clone()
        out[:, :half] = out[:, :half] * self.backbone
        return out

    def _count(self, params):
        self.steps += 1
