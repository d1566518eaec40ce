"""Sibling neurons reading the same input tensor spike it once.

A transformer block feeds one tensor to several projections (q, k and v; gate and up;
Gated DeltaNet's and GLA's input projections). Their neurons, with the same settings,
make the same counts from it, so the first one's ``(counts, v_th)`` are handed to the
next ones instead of scanning the input again. The entry is the last input spiked on
this thread, identified by the tensor that owns it (a weak reference: a freed tensor
whose memory is reused never matches, and the entry is dropped, counts and all, as soon
as that tensor is freed), the view's offset, shape and strides, the version counter (an
in-place change never matches) and the neuron's settings. Inference tensors have no version counter and are never shared.
"""

from __future__ import annotations

import threading
import weakref

import torch


class _Slot:
    __slots__ = ("entry",)

    def __init__(self):
        self.entry = None       # (weak reference to the input, key, counts, v_th)


class _PerThread(threading.local):
    def __init__(self):
        self.slot = _Slot()


_local = _PerThread()


def _anchor(x: torch.Tensor) -> torch.Tensor:
    """The tensor that owns ``x``'s memory: ``x`` or, for a view (each layer reshapes its
    input into rows, a new view object per call), the tensor it views."""
    return x if x._base is None else x._base


def input_key(x: torch.Tensor, settings: tuple):
    """What a hit must match besides the object: the view's place in its memory, the
    version (shared by a view and its base) and the neuron's settings (None: never share
    this input)."""
    if not isinstance(x, torch.Tensor) or x.is_inference():
        return None
    return (x._version, x.storage_offset(), x.shape, x.stride(), x.dtype, x.device, settings)


def lookup(x: torch.Tensor, key):
    """``(counts, v_th)`` made from ``x`` (or the same view of the same tensor) under
    ``key`` on this thread, or None."""
    e = _local.slot.entry
    if key is None or e is None or e[0]() is not _anchor(x) or e[1] != key:
        return None
    return e[2], e[3]


def remember(x: torch.Tensor, key, counts: torch.Tensor, v_th: torch.Tensor) -> None:
    """Keep ``(counts, v_th)`` of ``x`` for the next neuron on this thread, until the
    tensor is freed or another input is spiked."""
    slot = _local.slot
    if key is None:
        slot.entry = None
        return

    def forget(ref, slot=slot):
        if slot.entry is not None and slot.entry[0] is ref:
            slot.entry = None

    slot.entry = (weakref.ref(_anchor(x), forget), key, counts, v_th)


def clear() -> None:
    """Forget this thread's entry."""
    _local.slot.entry = None
