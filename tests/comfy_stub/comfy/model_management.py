"""comfy/model_management.py: what sampling asks of the memory manager. `FREE_MEMORY` (stand-in
only) is what `get_free_memory` reports, so a test can make ComfyUI split a batched call."""

import torch

FREE_MEMORY = 1 << 40


def get_free_memory(dev=None, torch_free_too=False):
    return FREE_MEMORY


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


class InterruptProcessingException(Exception):
    pass


_interrupted = False


def interrupt_current_processing(value=True):
    global _interrupted
    _interrupted = value


def throw_exception_if_processing_interrupted():
    """Raises once after an interrupt was asked for, and clears the flag (as ComfyUI does)."""
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()
