"""INT8 per (token, head) fake quantisation of attention keys and values (W8ASpike)."""

from __future__ import annotations

import torch
from torch import nn


class Int8PerTokenHead(nn.Module):
    """``round(x / s).clamp(-128, 127) * s`` with ``s = amax|x| / 127`` over the last dim
    (head_dim), i.e. one scale per (batch, head, token), as the released code does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.detach().abs().amax(-1, keepdim=True) / 127
        s = torch.where(s > 0, s, torch.ones_like(s))
        return torch.round(x / s).clamp(-128, 127) * s
