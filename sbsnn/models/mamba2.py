"""Mamba-2 (SSD) mixer, pure PyTorch, as transformers runs it for ``granitemoehybrid``,
``falcon_h1``, ``bamba`` and ``nemotron_h``.

Per head h (head dim P, state size N), with the head's group g supplying B and C::

    dt_t = softplus(dt_raw_t + dt_bias_h)           (clamped to time_step_limit on prompts)
    S_t  = exp(dt_t * A_h) S_{t-1} + dt_t * x_t B_t^T     S: [P, N], A_h = -exp(A_log_h)
    y_t  = S_t C_t + D_h x_t

``ssd_recurrent`` steps this token by token (decoding, and the naive reference);
``ssd_chunked`` processes a prompt in chunks (pairwise decays inside a chunk, the state
carried across chunks). Every decay either form exponentiates is <= 0.

Around the recurrence: ``in_proj`` gives the gate z, xBC and dt; a depthwise causal
conv1d (kernel ``d_conv``) with an activation runs over xBC, which splits into x (heads),
B and C (``n_groups`` groups, ``num_heads / n_groups`` heads each); the output is gated
(``silu(z)``) with an optional group-wise RMSNorm, then ``out_proj``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sbsnn.models.causal_conv import causal_conv1d, causal_conv1d_step
from sbsnn.models.layers import ACTIVATIONS


# --------------------------------------------------------------------------------------
# The SSD recurrence
# --------------------------------------------------------------------------------------

def _heads_of_groups(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, G, N] -> [B, L, H, N]: each group's B or C serves its H/G consecutive heads."""
    return t.repeat_interleave(num_heads // t.shape[2], dim=2)


def ssd_recurrent(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor, D: torch.Tensor | None = None,
                  state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step the recurrence token by token. Shapes: x ``[b, L, H, P]``; dt ``[b, L, H]``
    (already softplus'd); A, D ``[H]``; B, C ``[b, L, G, N]`` with G dividing H; state
    ``[b, H, P, N]``. Returns y ``[b, L, H, P]`` and the final state."""
    b, L, H, P = x.shape
    N = B.shape[-1]
    if state is None:
        state = x.new_zeros(b, H, P, N)
    Bh, Ch = _heads_of_groups(B, H), _heads_of_groups(C, H)
    ys = []
    for t in range(L):
        dt_t = dt[:, t, :, None, None]                               # [b, H, 1, 1]
        state = (dt_t * A[:, None, None]).exp() * state \
            + dt_t * x[:, t, :, :, None] * Bh[:, t, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", state, Ch[:, t])
        if D is not None:
            y = y + D[:, None] * x[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, H, P)
    return y, state


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, D: torch.Tensor | None = None,
                state: torch.Tensor | None = None, chunk_size: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`ssd_recurrent`, computed chunk by chunk.

    With ``a_t = dt_t A`` (log decay, <= 0) the decay from token s to token t of a chunk
    is ``exp(a_{s+1} + ... + a_t)``; it is summed over exactly those terms (not taken as
    a difference of prefix sums, which cancels badly when the decays are strong). The
    pairwise decays of all chunks are formed at once: ``b * H * L * C`` numbers.
    """
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    if state is None:
        state = x.new_zeros(b, H, P, N)
    if L == 0:
        return x.new_zeros(b, 0, H, P), state
    Cs = chunk_size
    pad = (-L) % Cs
    xs = x * dt[..., None]                                   # dt folded into the input
    a = dt * A                                               # [b, L, H]
    if pad:  # padding adds nothing and decays nothing
        xs = F.pad(xs, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    n = (L + pad) // Cs
    hg = H // G
    xs = xs.reshape(b, n, Cs, G, hg, P)
    a = a.reshape(b, n, Cs, G, hg).permute(0, 1, 3, 4, 2)           # [b, n, G, hg, Cs]
    Bc = B.reshape(b, n, Cs, G, N)
    Cc = C.reshape(b, n, Cs, G, N)
    # seg[t, s] = a_{s+1} + ... + a_t for s <= t: cumulative sum down t of a_t masked to t > s.
    strict = torch.ones(Cs, Cs, dtype=torch.bool, device=x.device).tril(-1)
    seg = a[..., :, None].expand(*a.shape, Cs).masked_fill(~strict, 0).cumsum(dim=-2)
    causal = torch.ones(Cs, Cs, dtype=torch.bool, device=x.device).tril()
    decay = seg.masked_fill(~causal, float("-inf")).exp()          # [b, n, G, hg, t, s]
    scores = torch.einsum("bntgk,bnsgk->bngts", Cc, Bc)            # C_t . B_s per group
    y_intra = torch.einsum("bnghts,bnsghp->bntghp", scores[:, :, :, None] * decay, xs)
    cum = a.cumsum(dim=-1)                                          # [b, n, G, hg, Cs]
    to_end = seg[..., -1, :]                                         # a_{s+1..Cs}: [.., s]
    chunk_decay = cum[..., -1].exp()                                 # [b, n, G, hg]
    state = state.reshape(b, G, hg, P, N)
    y_inter = []
    for c in range(n):
        # Contribution of the state entering the chunk: exp(a_1..a_t) C_t S0.
        y_inter.append(torch.einsum("btgk,bghpk,bght->btghp", Cc[:, c], state, cum[:, c].exp()))
        state = chunk_decay[:, c, :, :, None, None] * state + torch.einsum(
            "bsgk,bghs,bsghp->bghpk", Bc[:, c], to_end[:, c].exp(), xs[:, c])
    y = y_intra + torch.stack(y_inter, dim=1)
    y = y.reshape(b, n * Cs, H, P)[:, :L]
    if D is not None:
        y = y + D[:, None] * x
    return y, state.reshape(b, H, P, N)


# --------------------------------------------------------------------------------------
# The gated norm and the module
# --------------------------------------------------------------------------------------

class GatedRMSNorm(nn.Module):
    """RMSNorm over each of ``n_groups`` equal slices of the last dimension, gated by
    ``silu(z)``: before the norm (``norm(y * silu(z)) * w``: Granite, Bamba, Nemotron-H,
    Falcon-H1 with ``mamba_norm_before_gate=False``) or after it
    (``norm(y) * w * silu(z)``: Falcon-H1's default). Half precision is computed in
    float32."""

    def __init__(self, dim: int, n_groups: int = 1, eps: float = 1e-6,
                 norm_before_gate: bool = False):
        super().__init__()
        self.n_groups, self.eps, self.norm_before_gate = n_groups, eps, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        y, gate = y.to(work), F.silu(z.to(work))
        if not self.norm_before_gate:
            y = y * gate
        g = y.unflatten(-1, (self.n_groups, -1))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        y = g.flatten(-2) * self.weight.to(work)
        if self.norm_before_gate:
            y = y * gate
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, n_groups={self.n_groups}, eps={self.eps}, "
                f"norm_before_gate={self.norm_before_gate}")


class Mamba2Mixer(nn.Module):
    """A Mamba-2 layer. Parameter names equal transformers' (GraniteMoeHybridMambaLayer,
    FalconH1Mixer, BambaMixer, NemotronHMamba2Mixer): ``in_proj``, ``conv1d``,
    ``dt_bias``, ``A_log``, ``D``, ``norm.weight`` (absent with ``rms_norm=False``),
    ``out_proj``; state dicts copy across by name.

    ``in_proj`` outputs ``[z (d_inner) | x (d_inner) | B (G*N) | C (G*N) | dt (H)]``.
    Falcon-H1's muP: the input is scaled by ``in_multiplier`` (``ssm_in_multiplier``) and
    the five segments of ``in_proj``'s output by ``zxbcdt_multipliers``
    (``ssm_multipliers``); the others leave both at 1.

    ``time_step_limit`` clamps dt on the prompt (chunked) path only: transformers and
    mamba_ssm clamp there and not in the one-token decoding step, and so does this.
    (Nemotron-H passes ``(time_step_min, inf)``; the others ``time_step_limit``.)

    State (a dict the caller keeps, updated in place): ``conv_state`` ``[b, conv_dim,
    d_conv - 1]`` (the last d_conv - 1 xBC inputs, in the activations' dtype: the last
    columns of transformers' cache, which keeps one more that is never read again) and
    ``ssm_state`` ``[b, H, head_dim, d_state]`` (float32 for half-precision inputs), as
    transformers' cache holds it.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, d_state: int,
                 n_groups: int = 1, d_conv: int = 4, chunk_size: int = 256,
                 activation: str = "silu", conv_bias: bool = True, bias: bool = False,
                 out_bias: bool | None = None, norm_eps: float = 1e-6, rms_norm: bool = True,
                 norm_before_gate: bool = False,
                 time_step_limit: tuple[float, float] = (0.0, math.inf),
                 in_multiplier: float = 1.0,
                 zxbcdt_multipliers: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)):
        super().__init__()
        if num_heads % n_groups:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of n_groups ({n_groups})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not supported; one of {sorted(ACTIVATIONS)}")
        if len(zxbcdt_multipliers) != 5:
            raise ValueError(f"zxbcdt_multipliers needs 5 values (z, x, B, C, dt), got {zxbcdt_multipliers!r}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.d_state, self.n_groups, self.d_conv = d_state, n_groups, d_conv
        self.chunk_size, self.activation = chunk_size, activation
        self.time_step_limit = (float(time_step_limit[0]), float(time_step_limit[1]))
        self.in_multiplier = float(in_multiplier)
        self.zxbcdt_multipliers = tuple(float(m) for m in zxbcdt_multipliers)
        self.d_inner = d_inner = num_heads * head_dim
        self.conv_dim = conv_dim = d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(hidden_size, d_inner + conv_dim + num_heads, bias=bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.ones(num_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, num_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(num_heads))
        self.rms_norm = rms_norm
        if rms_norm:
            self.norm = GatedRMSNorm(d_inner, n_groups, norm_eps, norm_before_gate)
        self.out_proj = nn.Linear(d_inner, hidden_size, bias=bias if out_bias is None else out_bias)

    def _project(self, x: torch.Tensor):
        if self.in_multiplier != 1.0:
            x = x * self.in_multiplier
        zxbcdt = self.in_proj(x)
        if self.zxbcdt_multipliers != (1.0,) * 5:
            # One vector over the five segments, in the activations' dtype: FalconH1's muP
            # vector (so in half precision the multipliers round as they do there).
            GN = self.n_groups * self.d_state
            sizes = (self.d_inner, self.d_inner, GN, GN, self.num_heads)
            zxbcdt = zxbcdt * torch.cat([zxbcdt.new_full((n,), m) for n, m in
                                         zip(sizes, self.zxbcdt_multipliers)])
        return zxbcdt.split([self.d_inner, self.conv_dim, self.num_heads], dim=-1)

    def _split_xbc(self, xbc: torch.Tensor):
        GN = self.n_groups * self.d_state
        xs, B, C = xbc.split([self.d_inner, GN, GN], dim=-1)
        return (xs.unflatten(-1, (self.num_heads, self.head_dim)),
                B.unflatten(-1, (self.n_groups, self.d_state)),
                C.unflatten(-1, (self.n_groups, self.d_state)))

    def _gate(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.rms_norm:
            return self.norm(y, z)
        return y * F.silu(z)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """x ``[b, L, hidden]``. With ``state`` (a dict, empty to start) the conv and SSM
        states are read from it and written back; one token with a state takes the
        recurrent step, anything else the chunked prompt path."""
        b, L, _ = x.shape
        dtype = x.dtype
        z, xbc, dt = self._project(x)
        conv_state = state.get("conv_state") if state is not None else None
        ssm_state = state.get("ssm_state") if state is not None else None
        weight = self.conv1d.weight[:, 0, :]
        A = -torch.exp(self.A_log.float())
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        if L == 1 and conv_state is not None and ssm_state is not None:
            xbc, conv_state = causal_conv1d_step(xbc[:, 0], conv_state, weight,
                                                 self.conv1d.bias, self.activation)
            xs, B, C = self._split_xbc(xbc[:, None].to(work))
            dt = F.softplus(dt.to(work) + self.dt_bias.to(work))
            y, ssm_state = ssd_recurrent(xs, dt, A.to(work), B, C, self.D.to(work), ssm_state)
        else:
            xbc, conv_state = causal_conv1d(xbc.transpose(1, 2), weight, self.conv1d.bias,
                                            conv_state, self.activation)
            xs, B, C = self._split_xbc(xbc.transpose(1, 2).to(work))
            dt = F.softplus(dt.to(work) + self.dt_bias.to(work))
            dt = dt.clamp(min=self.time_step_limit[0], max=self.time_step_limit[1])
            y, ssm_state = ssd_chunked(xs, dt, A.to(work), B, C, self.D.to(work), ssm_state,
                                       chunk_size=self.chunk_size)
        if state is not None:
            state["conv_state"], state["ssm_state"] = conv_state, ssm_state
        y = self._gate(y.reshape(b, L, self.d_inner), z)
        return self.out_proj(y.to(dtype))

    def state_bytes(self, batch_size: int = 1, dtype: torch.dtype | None = None) -> int:
        """Bytes of the decoding state for ``batch_size`` sequences with activations of
        ``dtype`` (default: the parameters'): ``b * conv_dim * (d_conv - 1) * itemsize``
        for the conv window plus ``b * H * head_dim * d_state * itemsize'`` for the SSM state
        (itemsize' = 4 for half precision, whose SSM state is kept in float32). Constant
        in the number of tokens."""
        dtype = dtype or self.in_proj.weight.dtype
        item = dtype.itemsize
        ssm_item = 4 if dtype in (torch.float16, torch.bfloat16) else item
        return batch_size * (self.conv_dim * (self.d_conv - 1) * item
                             + self.num_heads * self.head_dim * self.d_state * ssm_item)


def state_nbytes(state: dict) -> int:
    """Bytes held by a Mamba-2 state dict (as measured, for checking ``state_bytes``)."""
    return sum(t.numel() * t.element_size() for t in state.values())
