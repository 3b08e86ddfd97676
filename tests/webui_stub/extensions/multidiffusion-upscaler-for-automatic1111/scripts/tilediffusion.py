"""What Tiled Diffusion's MultiDiffusion (pkuliyi2015/multidiffusion-upscaler-for-
automatic1111, tile_methods/multidiffusion.py) does to the model call: it replaces the
`forward` of the sampler's inner model on the instance with one that evaluates the latent
in tiles (here two halves of the width), with every row's sigma and cond repeated per
tile, and puts the tiles back together. Rows stay independent.
"""

import torch


class TiledDiffusion:
    def process_before_every_sampling(self, p, **kwargs):
        inner = p.sampler.model_wrap_cfg.inner_model
        original = inner.forward

        def forward(x, sigma, **kwargs):
            tiles = torch.tensor_split(x, 2, dim=-1)
            return torch.cat([original(tile, sigma, **kwargs) for tile in tiles], dim=-1)

        inner.forward = forward
