"""SEGA asks the model only for the rows that can change the image."""

from __future__ import annotations

import contextlib

import pytest
import torch
from host_harness import Host, model, sega_values


@pytest.fixture(scope="module")
def host():
    return Host()


@contextlib.contextmanager
def model_batches(kind="sd1"):
    """Rows of every UNet evaluation (a forward pre-hook: replacing apply_model would look
    like another extension replacing the model call, and SEGA would change its path)."""
    seen = []
    handle = model(kind).unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        yield seen
    finally:
        handle.remove()


def test_concepts_get_no_rows_during_warmup_without_momentum_or_after_cooldown(host):
    with model_batches() as plain:
        host.generate(None, steps=8, batch_size=2)
    with model_batches() as ours:
        host.generate(sega_values("a :: warmup=3 cooldown=5\nb :: warmup=4 cooldown=6", momentum_scale=0.0),
                      steps=8, batch_size=2)
    assert plain == [4] * 8
    # steps 0-2: nobody warm; 3: a; 4: a, b; 5: b; 6-7: both cooled down.
    assert ours == [4, 4, 4, 6, 8, 6, 4, 4]


def test_with_momentum_unwarmed_concepts_are_evaluated(host):
    with model_batches() as ours:
        host.generate(sega_values("a :: warmup=3 cooldown=5", momentum_scale=0.3), steps=7)
    assert ours == [3, 3, 3, 3, 3, 2, 2]


def test_low_vram_mode_keeps_model_calls_at_plain_size_with_the_same_images(host):
    opts = host.w.shared.opts
    values = sega_values("smile\n-glasses :: warmup=1", warmup="0")
    for kind in ("sd1", "sdxl"):
        wide = host.generate(values, kind=kind, batch_size=2).images
        opts.sega_low_vram = True
        try:
            with model_batches(kind) as batches:
                low = host.generate(values, kind=kind, batch_size=2).images
        finally:
            opts.reset()
        assert host.reported == []
        assert max(batches) == 4  # never more rows than the plain cond + uncond call
        assert batches.count(2) == 2 * 6  # each concept its own call at every step (momentum is on)
        torch.testing.assert_close(low, wide, rtol=1e-4, atol=1e-4)
        assert not torch.equal(low, host.generate(None, kind=kind, batch_size=2).images)
