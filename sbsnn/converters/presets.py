"""Which modules a conversion touches.

Presets (SpikingBrain report section 3 and its released W8ASpike code):

- ``paper``: the input of every linear projection is spiked and its weight made INT8:
  attention q, k, v, o (q with its output-gate rows in Qwen3.5's gated attention), the
  GLA gate (both low-rank halves), the linear mixers' projections (Gated DeltaNet
  ``in_proj_qkv``/``in_proj_z``/``in_proj_b``/``in_proj_a`` or ``in_proj_qkvz``/
  ``in_proj_ba``, and ``out_proj``; Mamba-2 and the short convolution ``in_proj`` and
  ``out_proj``), MLP gate, up and down, MoE router and experts. Never the embedding or
  ``lm_head``. What lies between the projections stays float: the recurrences (GLA,
  delta rule, SSD), the depthwise convolutions, gates, norms and attention products.
- ``w8aspike``: what the released code does: as ``paper`` but every ``down_proj`` stays
  dense and float (upstream fuses it into a SwiGLU kernel); in window/full attention
  layers the query is spiked again after RoPE with one threshold per (token, head), and
  keys and values are INT8 per (token, head) as they enter the cache. The linear mixers
  have no such hooks (their states stay float) and their projections spike as in
  ``paper``: upstream's recipe covers GLA and softmax attention only, so nothing else
  is left dense.
- custom: ``targets``, glob patterns over module names (``fnmatch``), for any model
  built from ``nn.Linear`` (Llama, Qwen2, a BERT-style encoder, your own).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from sbsnn.errors import OptionError

PRESETS = ("paper", "w8aspike")
HEAD_NAMES = ("lm_head",)


def _is_head(name: str) -> bool:
    return name.split(".")[-1] in HEAD_NAMES


def linear_targets(model: nn.Module, preset: str | None = "paper",
                   targets: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    """Names of the ``nn.Linear`` modules to convert, in model order."""
    for name, v in (("targets", targets), ("exclude", exclude)):
        if v is not None and (isinstance(v, (str, bytes)) or not all(isinstance(p, str) for p in v)):
            # a lone string would be read pattern by character ("*" matching every layer)
            raise OptionError(f"{name} must be a list of glob patterns, got {v!r}"
                              + (f" (wrap it: [{v!r}])" if isinstance(v, str) else ""))
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if targets:
        chosen = [n for n in linears if any(fnmatchcase(n, p) for p in targets)]
        unmatched = [p for p in targets if not any(fnmatchcase(n, p) for n in linears)]
        if unmatched:
            raise OptionError(f"targets {unmatched} match no nn.Linear module; linear modules "
                             f"look like {linears[:4]}")
    elif preset == "paper":
        chosen = [n for n in linears if not _is_head(n)]
    elif preset == "w8aspike":
        chosen = [n for n in linears if not _is_head(n) and not n.endswith("down_proj")]
    else:
        raise OptionError(f"unknown preset {preset!r}; choose one of {PRESETS} or give targets")
    if exclude:
        idle = [p for p in exclude if not any(fnmatchcase(n, p) for n in chosen)]
        if idle:   # a typo would leave the layer it meant converted, without a word
            raise OptionError(f"exclude patterns {idle} match none of the layers being "
                              f"converted (they look like {chosen[:3]}); fix or drop them")
        chosen = [n for n in chosen if not any(fnmatchcase(n, p) for p in exclude)]
    return chosen


def attention_hook_targets(model: nn.Module, preset: str | None) -> list[str]:
    """Names of softmax-attention modules whose query/KV hooks ``w8aspike`` fills."""
    if preset != "w8aspike":
        return []
    return [n for n, m in model.named_modules()
            if all(hasattr(m, h) for h in ("q_post_rope", "k_cache_quant", "v_cache_quant"))]
