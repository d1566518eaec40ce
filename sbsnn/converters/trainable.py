"""What spiking-aware fine-tuning trains in a spiking model, and how the trained values
become an ordinary spiking model again (``sbsnn.runs.finetune`` runs the training).

Four kinds, any of them together (``codes`` and ``lora`` exclude each other):

| kind | trained tensors | in the forward | written back |
| --- | --- | --- | --- |
| ``norms`` | every RMSNorm weight (as refinement) | as they are | the norm weights |
| ``scales`` | a gain per weight scale (``[out, groups]``, from 1) | ``scale * gain`` | ``weight_scales`` |
| ``codes`` | each weight code as a float (from its code) | rounded to the INT8 grid, clamped to +-127 | ``weight_codes`` |
| ``lora`` | a rank-``r`` adapter ``B @ A`` per layer (``B`` from 0) | ``codes + B @ A / scale``, rounded to the grid | ``weight_codes`` (merged before quantisation) |

Rounding to the grid has the straight-through gradient (as the neurons' counts do), so a
code moves once its float value crosses half a step; the forward weight is
``dequantize_weight(grid codes, scales)``, the very codes and scales :meth:`Trainables.apply`
writes, so the fine-tuned model's integer path computes what training computed, to float
rounding. Nothing else changes: every spiking layer stays spiking with its own k and the
threshold rule (``mean|x| / k`` per token, online).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sbsnn.converters.quant import CODE_MAX, dequantize_weight
from sbsnn.converters.spiking_linear import SpikingLinear, spiking_layers
from sbsnn.errors import OptionError
from sbsnn.models.layers import RMSNorm

__all__ = ["KINDS", "LR_SCALE", "Trainables", "check_train", "grid_codes", "norm_weights"]

KINDS = ("norms", "scales", "codes", "lora")

# Adam moves every value by about lr per step whatever its gradient's size, so each kind
# gets the lr in its own units: norm weights and scale gains sit near 1; a code's float
# value is in steps of the grid (a weight group spans +-127 of them), so lr * 50 moves a
# code by about 0.05 step (5 % of its magnitude per thousand steps at lr 1e-3); an
# adapter's A and B start near 1 / sqrt(in) and 0. Measured in docs/calibration.md.
LR_SCALE = {"norms": 1.0, "scales": 1.0, "codes": 50.0, "lora": 1.0}


def check_train(train, name: str = "train") -> tuple[str, ...]:
    """The kinds to train, as a tuple in the order of :data:`KINDS`; anything else is
    refused (``name``: the option as the caller knows it)."""
    if isinstance(train, str):
        train = (train,)
    try:
        kinds = tuple(train)
    except TypeError:
        raise OptionError(f"{name} must be a list of kinds ({', '.join(KINDS)}), got "
                          f"{type(train).__name__}") from None
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise OptionError(f"{name}: {unknown[0]!r} is not a kind fine-tuning trains; choose "
                          f"among {', '.join(KINDS)}" if unknown else
                          f"{name} names no kind; choose among {', '.join(KINDS)}")
    if "codes" in kinds and "lora" in kinds:
        raise OptionError(f"{name}: 'codes' and 'lora' both move the weight codes; choose one "
                          "(lora: a low-rank change merged before quantisation; codes: every code)")
    return tuple(k for k in KINDS if k in kinds)


def norm_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of every RMSNorm of ``model``, by name (what ``norms`` trains)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, RMSNorm) and isinstance(getattr(mod, "weight", None), nn.Parameter):
            out[f"{name}.weight"] = mod.weight
    return out


def grid_codes(latent: torch.Tensor) -> torch.Tensor:
    """Float codes on the INT8 grid: ``round(latent)`` (half to even) clamped to +-127,
    with the straight-through gradient (the value is exactly the grid's, as in the
    neurons: ``q + (x - x)``)."""
    q = latent.detach().round().clamp_(-CODE_MAX, CODE_MAX)
    return q + (latent - latent.detach()) if latent.requires_grad else q


def _expand(scales: torch.Tensor, group_size: int, in_features: int) -> torch.Tensor:
    """Per-group values ``[out, G]`` repeated over each group's inputs: ``[out, in]``."""
    return scales.repeat_interleave(group_size, dim=1)[:, :in_features]


class Trainables:
    """The trained tensors of ``spiking`` (a converted model) for the kinds ``train``
    (:data:`KINDS`), created from its current values so that, untrained, they give its
    forward exactly; ``rank`` is the adapters' (``lora``), ``seed`` draws their ``A``.

    :meth:`tensors` lists everything trained by a stable name (for state files and
    reductions across processes), :meth:`param_groups` the optimizer's groups,
    :meth:`weight` the forward weight of a layer, :meth:`apply` writes the values into a
    model of the same structure."""

    def __init__(self, spiking: nn.Module, train=("norms",), rank: int = 8, seed: int = 0):
        self.train = check_train(train)
        self.rank = rank
        self.layers: dict[str, SpikingLinear] = dict(spiking_layers(spiking))
        if not self.layers:
            raise OptionError("fine-tuning needs a spiking model (from sbsnn.convert or "
                              "load_spiking); this one has no spiking layers")
        self.norms = norm_weights(spiking) if "norms" in self.train else {}
        if "norms" in self.train and not self.norms:
            raise OptionError("train: 'norms' fits RMSNorm weights and this model has none")
        self.gains: dict[str, torch.Tensor] = {}
        self.codes: dict[str, torch.Tensor] = {}
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        gen = torch.Generator().manual_seed(seed + 11)
        for name, m in self.layers.items():
            dev = m.weight_scales.device
            if "scales" in self.train:
                self.gains[name] = torch.ones_like(m.weight_scales, dtype=torch.float32,
                                                   requires_grad=True)
            if "codes" in self.train:
                self.codes[name] = m.weight_codes.to(torch.float32).requires_grad_(True)
            if "lora" in self.train:
                a = torch.randn(rank, m.in_features, generator=gen) / math.sqrt(m.in_features)
                b = torch.zeros(m.out_features, rank)
                self.adapters[name] = (a.to(dev).requires_grad_(True), b.to(dev).requires_grad_(True))

    def moves(self, name: str) -> bool:
        """Whether layer ``name``'s forward weight depends on what is trained."""
        return name in self.gains or name in self.codes or name in self.adapters

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by a stable name (``kind/module``), in a fixed order."""
        out = {f"norms/{n}": p for n, p in self.norms.items()}
        out.update({f"scales/{n}": t for n, t in self.gains.items()})
        out.update({f"codes/{n}": t for n, t in self.codes.items()})
        for n, (a, b) in self.adapters.items():
            out[f"lora_a/{n}"], out[f"lora_b/{n}"] = a, b
        return out

    def param_groups(self, lr: float) -> list[dict]:
        """Adam's parameter groups: one per kind, each with ``lr * LR_SCALE[kind]``."""
        kinds = {"norms": list(self.norms.values()), "scales": list(self.gains.values()),
                 "codes": list(self.codes.values()),
                 "lora": [t for ab in self.adapters.values() for t in ab]}
        return [{"params": kinds[k], "lr": lr * LR_SCALE[k], "name": k}
                for k in self.train if kinds[k]]

    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.tensors().values())

    # ------------------------------------------------------------------ forward values
    def grid(self, name: str) -> torch.Tensor:
        """Layer ``name``'s codes as floats on the INT8 grid (differentiable where trained)."""
        m = self.layers[name]
        if name in self.codes:
            return grid_codes(self.codes[name])
        if name in self.adapters:
            a, b = self.adapters[name]
            s = _expand(m.weight_scales.float(), m.group_size, m.in_features)
            delta = torch.where(s > 0, (b @ a) / torch.where(s > 0, s, 1), 0)
            return grid_codes(m.weight_codes.float() + delta)
        return m.weight_codes.float()

    def scales(self, name: str) -> torch.Tensor:
        """Layer ``name``'s weight scales ``[out, G]`` (times its gains where trained)."""
        s = self.layers[name].weight_scales.float()
        return s * self.gains[name].clamp(min=0) if name in self.gains else s

    def weight(self, name: str) -> torch.Tensor:
        """Layer ``name``'s forward weight ``[out, in]``: the grid codes times the scales,
        by the one dequantisation the checkpoint's weights go through."""
        m = self.layers[name]
        return dequantize_weight(self.grid(name), self.scales(name), m.group_size)

    # ------------------------------------------------------------------ writing back
    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Write the trained values into ``model`` (the spiking model they were made from,
        or a copy of it): norm weights, INT8 codes and scales of the layers whose weights
        moved."""
        layers = dict(spiking_layers(model))
        norms = norm_weights(model)
        for n, p in self.norms.items():
            norms[n].copy_(p.detach().to(norms[n].dtype))
        for name in self.layers:
            if name in self.codes or name in self.adapters:
                layers[name].weight_codes.copy_(self.grid(name).detach().to(torch.int8))
            if name in self.gains:
                layers[name].weight_scales.copy_(self.scales(name).detach()
                                                 .to(layers[name].weight_scales.dtype))
