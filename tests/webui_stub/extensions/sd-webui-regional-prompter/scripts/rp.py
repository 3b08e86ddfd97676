"""What Regional Prompter (hako-mikan/sd-webui-regional-prompter, scripts/attention.py,
rp.py, latent.py; attention mode) does to the model call: in `process` it replaces the
`forward` of every cross-attention layer (attn2) on the instance, and takes it away again
in `postprocess`. Its hook splits rows by its own batch arithmetic: a call of exactly B
rows is all prompt or all negative (told apart by the context's token count), a call of
2B rows is B prompt rows then B negative rows, and any other call is cut in two halves
(first positive, second negative) with the attention heads halved. Prompt rows are
regional: the image's token sequence is cut into one part per 77-token region of the
context (BREAK), each attending only to its region; a region past the end of a row's
context attends to nothing. It also registers cfg_denoiser and cfg_denoised callbacks at
its first active generation (attention mode: they only reset its own counters).
"""

import torch
import torch.nn.functional as F
from modules import script_callbacks

_registered = []


class RegionalPrompter:
    def __init__(self, chunk=77):
        self.chunk = chunk
        self.layers = []
        self.calls = []  # rows of every hooked attention call

    def process(self, p):
        from modules import shared

        self.batch_size = p.batch_size
        self.regions = p.prompt.count("BREAK") + 1
        self.prompt_tokens = self.regions * self.chunk
        unet = shared.sd_model.unet
        self.layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
        for module in self.layers:
            module.forward = self._hook(module)
        if not _registered:
            script_callbacks.on_cfg_denoiser(self.on_denoiser)
            script_callbacks.on_cfg_denoised(self.on_denoised)
            _registered.append(self)

    def postprocess(self, p, processed):
        for module in self.layers:
            del module.forward

    def on_denoiser(self, params):
        self.pn = True

    def on_denoised(self, params):
        pass

    def _hook(self, module):
        def forward(hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            x, context = hidden_states, encoder_hidden_states
            n, b = x.shape[0], self.batch_size
            self.calls.append(n)
            if n == b:
                regional = context.shape[1] == self.prompt_tokens
                return self._attend(module, x, context, regional, 1)
            if n == 2 * b:
                return torch.cat([self._attend(module, x[:b], context[:b], True, 1),
                                  self._attend(module, x[b:], context[b:], False, 1)])
            half = (n + 1) // 2
            return torch.cat([self._attend(module, x[:half], context[:half], True, 2),
                              self._attend(module, x[half:], context[half:], False, 2)])

        return forward

    def _attend(self, module, x, context, regional, divide):
        if not regional:
            return self._attention(module, x, context, divide)
        parts = torch.tensor_split(x, self.regions, dim=1)
        outs = []
        for r, part in enumerate(parts):
            region = context[:, r * self.chunk:(r + 1) * self.chunk]
            outs.append(self._attention(module, part, region, divide))
        return torch.cat(outs, dim=1)

    @staticmethod
    def _attention(module, x, context, divide):
        heads = module.heads // divide
        q, k, v = module.to_q(x), module.to_k(context), module.to_v(context)
        n, length, inner = q.shape

        def split(t):
            return t.view(n, t.shape[1], heads, inner // heads).transpose(1, 2)

        if k.shape[1] == 0:
            out = q.new_zeros(q.shape)
        else:
            out = F.scaled_dot_product_attention(split(q), split(k), split(v))
            out = out.transpose(1, 2).reshape(n, length, inner)
        return module.to_out[1](module.to_out[0](out))
