"""Content fingerprints and a small LRU store, for keeping inversions across generations.

An inversion is only valid for exactly the model calls it was made with, so its key must
change whenever anything that reaches those calls changes: tensors by their bytes, nested
structures by their parts. Objects this cannot look into are fingerprinted by `repr`,
which for most objects includes their address: such a value makes a new key every time —
a repeated inversion, never a wrong one.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch

MAX_DEPTH = 8


def fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        _feed(h, part, 0)
    return h.hexdigest()


def _feed(h, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        h.update(b"<deep>")
        return
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        h.update(type(value).__name__.encode())
        h.update(repr(value).encode() if not isinstance(value, bytes) else value)
        h.update(b";")
        return
    if isinstance(value, torch.Tensor):
        t = value.detach().contiguous().cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return
    if isinstance(value, torch.nn.Module):  # a model's weights: by identity, never by content
        h.update(f"N{type(value).__qualname__}{id(value)}".encode())
        return
    if hasattr(value, "__array__") and hasattr(value, "tobytes") and hasattr(value, "shape"):  # numpy
        h.update(f"A{getattr(value, 'dtype', '')}{tuple(value.shape)}".encode())
        h.update(value.tobytes())
        return
    if hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size"):  # PIL image
        h.update(f"I{value.mode}{value.size}".encode())
        h.update(value.tobytes())
        return
    if isinstance(value, Mapping):
        h.update(f"M{len(value)}".encode())
        for k in sorted(value, key=repr):
            _feed(h, k, depth + 1)
            _feed(h, value[k], depth + 1)
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        h.update(f"{type(value).__name__}{len(items)}".encode())
        for item in items:
            _feed(h, item, depth + 1)
        return
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict) and not callable(value):
        h.update(f"O{type(value).__module__}.{type(value).__qualname__}".encode())
        _feed(h, {k: v for k, v in attributes.items() if not k.startswith("__")}, depth + 1)
        return
    if callable(value) and hasattr(value, "__qualname__"):
        h.update(f"F{getattr(value, '__module__', '')}.{value.__qualname__}".encode())
        return
    h.update(repr(value).encode())
    h.update(struct.pack("<Q", id(value)))


class LruStore:
    """At most `capacity` values, the least recently used dropped first. `size(value)` in
    bytes is summed for reports."""

    def __init__(self, size: Callable[[Any], int] = lambda v: 0):
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._size = size

    def get(self, key: str):
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Any, capacity: int) -> None:
        if capacity <= 0:
            self._items.clear()
            return
        self._items[key] = value
        self._items.move_to_end(key)
        self.trim(capacity)

    def trim(self, capacity: int) -> None:
        while len(self._items) > max(capacity, 0):
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        return sum(self._size(v) for v in self._items.values())
