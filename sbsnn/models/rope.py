"""Rotary position embeddings, computed as ``transformers`` computes them.

One :class:`RopeSpec` per attention kind of a model holds the parameters that
``transformers`` keeps in ``config.rope_parameters`` (the current layout; the older
``rope_theta`` + ``rope_scaling`` layout is translated into it by the config readers).
Supported ``rope_type`` values: ``default``, ``linear``, ``dynamic`` (NTK, grows with the
sequence), ``yarn`` (with its attention factor) and ``llama3``, each with an optional
``partial_rotary_factor`` (only the first ``rotary_dim`` channels of a head rotate; the
rest pass through, as GPT-NeoX-style models do). Any other type or parameter is refused
by name: a RoPE computed differently from the one a model was trained with gives logits
that look plausible and are wrong.

The frequencies are computed in float32 with the same expressions ``transformers`` uses
(``modeling_rope_utils``), so they agree bit for bit (the tests compare them); angles
are ``position * inv_freq`` in float32, and cos/sin are scaled by the attention factor
(yarn) before being cast to the activations' dtype.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from sbsnn.models.errors import CheckpointError

# rope_type -> (required keys, optional keys) besides rope_type / rope_theta /
# partial_rotary_factor, as transformers validates them.
ROPE_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "default": (set(), set()),
    "linear": ({"factor"}, set()),
    "dynamic": ({"factor"}, set()),
    "yarn": ({"factor", "original_max_position_embeddings"},
             {"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"}),
    "llama3": ({"factor", "original_max_position_embeddings", "low_freq_factor",
                "high_freq_factor"}, set()),
}
ROPE_TYPES = tuple(ROPE_KEYS)


@dataclass(frozen=True)
class RopeSpec:
    """The RoPE of one attention kind. ``head_dim`` and ``max_position_embeddings`` come
    from the model config (``dynamic`` and ``yarn`` need the latter)."""

    rope_type: str
    rope_theta: float
    head_dim: int
    max_position_embeddings: int
    partial_rotary_factor: float = 1.0
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_parameters(cls, params: dict, head_dim: int, max_position_embeddings: int,
                        source: str = "config") -> "RopeSpec":
        """From one ``rope_parameters`` dict (current transformers layout). Unknown
        types and keys are refused, naming them."""
        if not isinstance(params, dict):
            raise CheckpointError(f"{source}: rope_parameters must be an object, got {params!r}")
        p = dict(params)
        rtype = p.pop("rope_type", p.pop("type", "default"))
        p.pop("type", None)
        if rtype not in ROPE_KEYS:
            raise CheckpointError(
                f"{source}: rope_type {rtype!r} is not supported (sbsnn computes "
                f"{', '.join(ROPE_TYPES)}); the model would run with wrong positions")
        if "rope_theta" not in p:
            raise CheckpointError(f"{source}: rope_parameters {params!r} has no rope_theta")
        required, optional = ROPE_KEYS[rtype]
        missing = sorted(required - p.keys())
        if missing:
            raise CheckpointError(f"{source}: rope_type {rtype!r} needs {missing} in rope_parameters "
                                  f"(got {params!r})")
        allowed = required | optional | {"rope_theta", "partial_rotary_factor"}
        unknown = sorted(p.keys() - allowed)
        if unknown:
            k = unknown[0]
            raise CheckpointError(
                f"{source}: rope_parameters key {k!r} = {p[k]!r} is not understood for rope_type "
                f"{rtype!r} (known: {sorted(allowed)}); refusing rather than ignoring it")
        theta = p["rope_theta"]
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
            raise CheckpointError(f"{source}: rope_theta must be a positive number, got {theta!r}")
        prf = p.get("partial_rotary_factor", 1.0)
        if prf is None:
            prf = 1.0
        if isinstance(prf, bool) or not isinstance(prf, (int, float)) or not 0 < prf <= 1:
            raise CheckpointError(f"{source}: partial_rotary_factor must be in (0, 1], got {prf!r}")
        spec = cls(rope_type=rtype, rope_theta=float(theta), head_dim=int(head_dim),
                   max_position_embeddings=int(max_position_embeddings),
                   partial_rotary_factor=float(prf),
                   **{k: p[k] for k in (required | optional)
                      if k in p and k not in ("rope_theta", "partial_rotary_factor")})
        spec.check(source)
        return spec

    def check(self, source: str = "config") -> None:
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise CheckpointError(f"{source}: rotary dimension head_dim * partial_rotary_factor = "
                                  f"{self.head_dim} * {self.partial_rotary_factor} = {self.rotary_dim} "
                                  "must be an even number >= 2")
        if self.rope_type != "default":
            f = self.factor
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0:
                raise CheckpointError(f"{source}: rope_type {self.rope_type!r} needs a positive "
                                      f"factor, got {f!r}")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise CheckpointError(f"{source}: llama3 RoPE needs high_freq_factor > low_freq_factor, "
                                  f"got {self.high_freq_factor} and {self.low_freq_factor}")

    def to_parameters(self) -> dict:
        """The ``rope_parameters`` dict this spec was read from (unset keys left out)."""
        d = {k: v for k, v in asdict(self).items()
             if v is not None and k not in ("head_dim", "max_position_embeddings")}
        if d.get("partial_rotary_factor") == 1.0:
            d.pop("partial_rotary_factor")
        return d

    # ------------------------------------------------------------------ frequencies
    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def depends_on_length(self) -> bool:
        """``dynamic`` RoPE recomputes its frequencies once a sequence outgrows
        ``max_position_embeddings``."""
        return self.rope_type == "dynamic"

    def _base_inv_freq(self, base) -> torch.Tensor:
        dim = self.rotary_dim
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))

    def inv_freq(self, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
        """``(inv_freq float32 [rotary_dim // 2], attention_scaling)``.

        ``seq_len`` (positions seen so far, ``max position + 1``) matters only for
        ``dynamic``, whose base grows once it exceeds ``max_position_embeddings``.
        """
        dim, base, t = self.rotary_dim, self.rope_theta, self.rope_type
        if t == "default":
            return self._base_inv_freq(base), 1.0
        factor = self.factor
        if t == "linear":
            inv = self._base_inv_freq(base)
            inv /= factor
            return inv, 1.0
        if t == "dynamic":
            mpe = self.max_position_embeddings
            if seq_len is None or seq_len <= mpe:
                # What transformers builds at init (python floats, seq_len = mpe); it keeps
                # these frequencies until a sequence grows past mpe.
                s = mpe
            else:  # its forward passes a 0-d int64 tensor, so this runs in float32
                s = torch.tensor(int(seq_len), dtype=torch.int64)
            base = base * ((factor * s / mpe) - (factor - 1)) ** (dim / (dim - 2))
            return self._base_inv_freq(base), 1.0
        if t == "llama3":
            inv = self._base_inv_freq(base)
            old = self.original_max_position_embeddings
            low_wl = old / self.low_freq_factor
            high_wl = old / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = torch.where(wavelen > low_wl, inv / factor, inv)
            smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
            return torch.where(medium, smoothed, scaled), 1.0
        if t == "yarn":
            return self._yarn()
        raise AssertionError(t)  # from_parameters admits only the types above

    def _yarn(self) -> tuple[torch.Tensor, float]:
        dim, base, factor = self.rotary_dim, self.rope_theta, self.factor
        omax = self.original_max_position_embeddings

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        att = self.attention_factor
        if att is None:
            if self.mscale and self.mscale_all_dim:
                att = float(get_mscale(factor, self.mscale) / get_mscale(factor, self.mscale_all_dim))
            else:
                att = get_mscale(factor)
        beta_fast = self.beta_fast or 32
        beta_slow = self.beta_slow or 1

        def correction_dim(rotations):
            return (dim * math.log(omax / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if self.truncate is None or self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # as upstream: avoids a zero-width ramp
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
        extrapolation = 1.0 / pos_freqs
        interpolation = 1.0 / (factor * pos_freqs)
        keep = 1 - ramp
        return interpolation * (1 - keep) + extrapolation * keep, att

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype,
                seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[len(positions), rotary_dim]`` (rotate-half layout)."""
        inv, scaling = self.inv_freq(seq_len)
        freqs = positions.to(torch.float32)[:, None] * inv.to(positions.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x [..., L, head_dim]``; the others
    (partial rotary) pass through unchanged."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
