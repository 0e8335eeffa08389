"""Downsampled copies of a CT remembered per volume (the coarse levels of registration).

Repeated registrations of the same volume (Monte Carlo starts, experiments,
the Slicer panel) build their coarse levels once.
"""

from __future__ import annotations

import weakref

import torch

from ..errors import InputError
from .ct import Volume, _downsample_factors

# Keyed on the identity of the mu
# tensor, held weakly: an entry dies with its tensor; the tensor's version counter and the affine
# invalidate it on change. (Tensors cannot be WeakKeyDictionary keys: their == is elementwise.)
_PYRAMIDS: dict[int, tuple[weakref.ref, dict]] = {}


def tensor_cache(registry: dict[int, tuple[weakref.ref, dict]], tensor: torch.Tensor) -> dict:
    """The dict of derived values ``registry`` keeps for ``tensor``: keyed on its identity, held weakly
    (the entry is dropped when the tensor dies, and a new tensor reusing the id gets a fresh dict)."""
    entry = registry.get(id(tensor))
    if entry is None or entry[0]() is not tensor:
        entry = (weakref.ref(tensor), {})
        registry[id(tensor)] = entry
        weakref.finalize(tensor, registry.pop, id(tensor), None)
    return entry[1]


def downsample_cached(volume: Volume, factors: tuple[float, float, float]) -> Volume:
    """`Volume.downsample` remembered per volume (same mu tensor, unmodified, same affine, same factors)."""
    if not isinstance(volume, Volume):
        raise InputError(f"downsample_cached needs a Volume, got {type(volume).__name__}")
    factors = _downsample_factors(factors)
    if factors == (1.0, 1.0, 1.0):
        return volume
    mu = volume.mu
    if mu.requires_grad:  # a cached level would hold (or lack) the autograd graph of another call
        return volume.downsample(factors)
    key = (tuple(float(f) for f in factors), mu._version, tuple(volume.affine.flatten().tolist()),
           None if volume.labels is None else id(volume.labels), getattr(volume, "beam", None))
    levels = tensor_cache(_PYRAMIDS, mu)
    if key not in levels:
        for stale in [k for k in levels if k[1:] != key[1:]]:
            del levels[stale]
        levels[key] = volume.downsample(factors)
    return levels[key]
