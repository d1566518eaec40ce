"""Spiking input groups and the exact folding of per-channel smoothing.

A *group* is one activation tensor that several spiking linear layers read (q, k and v
read the attention norm's output; gate and up the MLP norm's): its consumers spike the
same values, so they share one k, and one smoothing vector ``s`` divides its channels.

Smoothing ``x -> x / s`` with the consumers' weight columns multiplied by ``s`` leaves the
float model's function unchanged; it is folded into the tensor's *producer*:

=========================  ========================================================
producer                   folding ``x_j -> x_j / s_j``
=========================  ========================================================
RMSNorm (fla, Llama)       weight ``w_j / s_j``
RMSNorm (Gemma, 1 + w)     weight ``(1 + w_j) / s_j - 1``
v_proj (softmax attn)      rows of v (and its bias) divided; attention mixes tokens, not
                           channels, so its output channel (h, d) is divided by the
                           s of key/value head ``h // G``, channel d: one s per group of
                           query heads (GQA)
up_proj (gated MLP)        rows of up (and bias) divided: ``act(gate) * up`` is linear in up
gk_proj.0 (GLA gate)       rows divided; gk_proj.1 reads it
g_norm (GLA output norm)   its weight (shared by all heads): one s per head channel
=========================  ========================================================

Groups are found from the data flow (which linears receive the very same input tensor
in a forward pass), producers from sbsnn's module names; a group whose producer is not
one of the above is calibrated without smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sbsnn.models.attention import WindowAttention
from sbsnn.models.gla import GatedLinearAttention
from sbsnn.models.layers import RMSNorm


@dataclass
class InputGroup:
    """One spiked activation and the linear layers that read it."""

    consumers: list[str]              # spiking linear module names, in model order
    in_features: int
    readers: list[str] = field(default_factory=list)  # every linear reading it (folding)
    producer: str | None = None       # module whose output this is (None: not foldable)
    kind: str = "none"                # "norm", "v_rows", "up_rows", "gate_rows", "g_norm"
    heads: tuple[int, int] = (1, 1)   # (query heads, key/value heads) for v_rows / g_norm
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.consumers[0]

    @property
    def elements(self) -> int:
        """Spiked elements per token: every consumer spikes its own copy."""
        return self.in_features * len(self.consumers)

    @property
    def foldable(self) -> bool:
        return self.producer is not None

    def to_dict(self) -> dict:
        return {"consumers": self.consumers, "in_features": self.in_features,
                "producer": self.producer, "fold": self.kind}


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def find_groups(model: nn.Module, targets: list[str], sample: torch.Tensor) -> list[InputGroup]:
    """Group ``targets`` (linear module names) by the input tensor they receive in one
    forward pass of ``sample`` ([1, L] token ids), and attach each group's producer.

    Every linear layer reading a group's tensor is recorded (``readers``), spiking or
    not, so that a folded smoothing is compensated in all of them. A producer claimed by
    two groups (MoE experts behind one norm) is folded into by none."""
    seen: dict[int, tuple[torch.Tensor, list[str]]] = {}
    hooks = []

    def hook(mod, inputs, output, name):
        x = inputs[0]
        entry = seen.setdefault(id(x), (x, []))  # holding x keeps its id from being reused
        if name not in entry[1]:
            entry[1].append(name)

    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name in linears:
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda m, i, o, n=name: hook(m, i, o, n)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in hooks:
            h.remove()
    order = {n: i for i, n in enumerate(linears)}
    wanted = set(targets)
    groups, called = [], set()
    for x, names in seen.values():
        names = sorted(names, key=order.get)
        spiking = [n for n in names if n in wanted]
        if spiking:
            called.update(spiking)
            groups.append(_with_producer(model, InputGroup(spiking, x.shape[-1], readers=names)))
    for n in targets:
        if n not in called:  # not reached by the sample (an unused expert): no smoothing
            groups.append(InputGroup([n], model.get_submodule(n).in_features, readers=[n]))
    producers: dict[str, int] = {}
    for g in groups:
        if g.producer is not None:
            producers[g.producer] = producers.get(g.producer, 0) + 1
    for g in groups:
        if g.producer is not None and producers[g.producer] > 1:
            g.producer, g.kind = None, "none"
    return sorted(groups, key=lambda g: order[g.name])


def _with_producer(model: nn.Module, g: InputGroup) -> InputGroup:
    first = g.consumers[0]
    parent = _parent(first)
    leaf = first.rpartition(".")[2]
    try:
        owner = model.get_submodule(parent)
    except AttributeError:
        return g
    block_name = _block_of(first)
    block = model.get_submodule(block_name) if block_name else None
    if leaf in ("q_proj", "k_proj", "v_proj") or first.endswith("gk_proj.0"):
        norm = getattr(block, "attn_norm", None)
        if isinstance(norm, RMSNorm):
            g.producer, g.kind = f"{block_name}.attn_norm", "norm"
    elif first.endswith("gk_proj.1"):
        g.producer, g.kind = f"{_parent(parent)}.gk_proj.0", "gate_rows"
    elif leaf == "o_proj" and isinstance(owner, WindowAttention):
        g.producer, g.kind = f"{parent}.v_proj", "v_rows"
        g.heads = (owner.num_heads, owner.num_kv_heads)
    elif leaf == "o_proj" and isinstance(owner, GatedLinearAttention):
        g.producer, g.kind = f"{parent}.g_norm", "g_norm"
        g.heads = (owner.num_heads, owner.num_kv_heads)
    elif leaf in ("gate_proj", "up_proj") or first.endswith("mlp.router"):
        norm = getattr(block, "mlp_norm", None)
        if isinstance(norm, RMSNorm) and _reads_mlp_norm(g.consumers, block_name):
            g.producer, g.kind = f"{block_name}.mlp_norm", "norm"
    elif leaf == "down_proj" and isinstance(getattr(owner, "up_proj", None), nn.Module):
        g.producer, g.kind = f"{parent}.up_proj", "up_rows"
    return g


def _block_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
        return ".".join(parts[:3])
    return None


def _reads_mlp_norm(consumers: list[str], block_name: str) -> bool:
    return all(c.startswith(block_name + ".mlp.") for c in consumers)


# ----------------------------------------------------------------------------- folding
def _weight_of(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_submodule(name).weight


@torch.no_grad()
def fold(model: nn.Module, group: InputGroup, s: torch.Tensor) -> None:
    """Divide the group's activation by ``s`` [in_features] at its producer and multiply
    its consumers' weight columns by ``s``: the float model computes the same function."""
    if not group.foldable:
        raise ValueError(f"group {group.name} has no producer to fold a smoothing into")
    s = s.to(torch.float64)
    prod = model.get_submodule(group.producer)
    if group.kind == "norm":
        w = prod.weight
        if prod.style == "gemma":
            w.copy_(((1 + w.double()) / s - 1).to(w.dtype))
        else:
            w.copy_((w.double() / s).to(w.dtype))
    elif group.kind in ("v_rows", "g_norm"):
        H, Hkv = group.heads
        D = group.in_features // H
        per = s.view(H, D)
        if group.kind == "v_rows":  # one value per (key/value head, channel)
            rep = per.view(Hkv, H // Hkv, D)
            if not torch.equal(rep, rep[:, :1].expand_as(rep)):
                raise ValueError(f"{group.name}: a GQA smoothing must be equal across the query "
                                 "heads of a key/value head")
            _divide_rows(prod, rep[:, 0].reshape(-1))
        else:  # g_norm's weight is shared by every head
            if not torch.equal(per, per[:1].expand_as(per)):
                raise ValueError(f"{group.name}: a smoothing folded into g_norm must be equal "
                                 "across heads")
            prod.weight.copy_((prod.weight.double() / per[0]).to(prod.weight.dtype))
    elif group.kind in ("up_rows", "gate_rows"):
        _divide_rows(prod, s)
    else:
        raise ValueError(f"unknown fold kind {group.kind!r}")
    for name in group.readers:
        w = _weight_of(model, name)
        w.copy_((w.double() * s[None, :]).to(w.dtype))


def _divide_rows(linear: nn.Linear, s: torch.Tensor) -> None:
    linear.weight.copy_((linear.weight.double() / s[:, None]).to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_((linear.bias.double() / s).to(linear.bias.dtype))


def tie_for_producer(group: InputGroup, s: torch.Tensor) -> torch.Tensor:
    """Make ``s`` respect the producer's sharing (GQA for v rows, all heads for g_norm),
    averaging in log space over the channels that must share one value."""
    if group.kind not in ("v_rows", "g_norm"):
        return s
    H, Hkv = group.heads
    D = group.in_features // H
    logs = s.log().view(H, D)
    if group.kind == "v_rows":
        shared = logs.view(Hkv, H // Hkv, D).mean(1, keepdim=True).expand(Hkv, H // Hkv, D)
    else:
        shared = logs.mean(0, keepdim=True).expand(H, D)
    return shared.reshape(-1).exp()
