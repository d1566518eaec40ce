"""The hybrid language model: a stack of blocks, each a mixer and an MLP (or MoE).

Module names mirror SpikingBrain-7B's checkpoint (``model.embeddings``,
``model.layers.{i}.attn``, ``.attn_norm``, ``.mlp_norm``, ``.mlp``, ``model.norm``,
``lm_head``), so its tensors load by name; the other families' names are mapped onto
them (:func:`sbsnn.models.families.rename_key`). One block::

    x = x + mixer(attn_norm(x))       mixer: GLA | window attention | full attention
    x = x + mlp(mlp_norm(x))                 | both side by side (76B "parallel")
                                             | Gated DeltaNet | Mamba-2 | short conv
                                             | attention and Mamba-2 side by side (Falcon-H1)

The linear mixers (``LINEAR_MIXERS``) sit under the names their families' checkpoints
use (``linear_attn``, ``mamba``, ``conv``). Gemma 3 ("sandwich" norms) normalises the
branch outputs too; Granite and Falcon-H1 scale them (muP); a Nemotron-H block holds one
sub-layer, a mixer or an MLP, behind one norm::

    x = x + post_attn_norm(mixer(attn_norm(x)))        x = x + sublayer(norm(x))
    x = x + post_mlp_norm(mlp(mlp_norm(x)))

RoPE tables are computed once per forward for each distinct RoPE of the model
(Gemma 3's sliding and global layers have different bases) and shared by its layers.

Decoding keeps a :class:`DecodeState`: per linear layer a fixed-size state (GLA's
``[Hkv, dk, dv]``; the others' convolution inputs and recurrent state), per window layer
a ring of ``sliding_window`` keys and values, per full-attention layer a cache that grows
with the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sbsnn.checks import check_float, check_int
from sbsnn.errors import NonFiniteError, OptionError, UnavailableError
from sbsnn.models.attention import WindowAttention
from sbsnn.models.config import HybridConfig
from sbsnn.models.gated_deltanet import GatedDeltaNet
from sbsnn.models.gla import GatedLinearAttention
from sbsnn.models.layers import MLP, MoE, RMSNorm, SwiGLU
from sbsnn.models.mamba2 import Mamba2Mixer
from sbsnn.models.short_conv import ShortConv
from sbsnn.models.rope import RopeSpec


def _make_gla(cfg: HybridConfig) -> GatedLinearAttention:
    return GatedLinearAttention(
        cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
        gate_low_rank_dim=cfg.gate_low_rank_dim,
        gate_logit_normalizer=cfg.gate_logit_normalizer, norm_eps=cfg.norm_eps,
        bias=cfg.attention_bias, gate=cfg.linear_attn_gate,
        feature_map=cfg.linear_feature_map)


def _make_attention(cfg: HybridConfig, i: int) -> WindowAttention:
    return WindowAttention(
        cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
        window=cfg.window_for(i), rope=cfg.rope_for(i), bias=cfg.attention_bias,
        num_sinks=cfg.num_sink_tokens, o_bias=cfg.o_proj_bias,
        qk_norm=cfg.norm_style if cfg.qk_norm else None, norm_eps=cfg.norm_eps,
        scaling=cfg.attn_scale, output_gate=cfg.attn_output_gate, use_rope=cfg.attn_rope,
        key_multiplier=cfg.key_multiplier)


def _scale(t: torch.Tensor, multiplier: float) -> torch.Tensor:
    """``t * multiplier`` (a Python float, as the muP families apply it); t itself at 1."""
    return t if multiplier == 1.0 else t * multiplier


# The linear mixers of the hybrid families, by layer kind: (module name in the block, as
# the family's checkpoints name it; constructor). Each takes ``(x, cache)``.
LINEAR_MIXERS: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "gdn": ("linear_attn", lambda cfg: GatedDeltaNet(cfg.hidden_size, norm_eps=cfg.norm_eps,
                                                     **cfg.mixer_args("gdn"))),
    "mamba2": ("mamba", lambda cfg: Mamba2Mixer(cfg.hidden_size, norm_eps=cfg.norm_eps,
                                                **cfg.mixer_args("mamba2"))),
    "conv": ("conv", lambda cfg: ShortConv(cfg.hidden_size, **cfg.mixer_args("conv"))),
}


class HybridBlock(nn.Module):
    def __init__(self, cfg: HybridConfig, i: int):
        super().__init__()
        self.kind = cfg.layer_kind(i)
        self.has_mixer, self.has_mlp = cfg.has_mixer(i), cfg.has_mlp(i)
        self.residual_multiplier = cfg.residual_multiplier
        if self.kind == "attn+mamba2":
            self.attn_in_multiplier = cfg.attn_in_multiplier
            self.attn_out_multiplier = cfg.attn_out_multiplier
            self.ssm_out_multiplier = cfg.ssm_out_multiplier
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.norm_eps, style=cfg.norm_style)  # noqa: E731
        # A block of one sub-layer (Nemotron-H) has one norm, ``norm``, before it.
        one = not (self.has_mixer and self.has_mlp)
        self._mixer_norm = "norm" if one else "attn_norm"
        self._mlp_norm = "norm" if one else "mlp_norm"
        if self.has_mixer:
            setattr(self, self._mixer_norm, norm())
        if self.kind in LINEAR_MIXERS:
            name, make = LINEAR_MIXERS[self.kind]
            self.mixer_name = name
            setattr(self, name, make(cfg))
        elif self.kind == "gla":
            self.attn = _make_gla(cfg)
        elif self.has_mixer:
            self.attn = _make_attention(cfg, i)
        if self.kind == "attn+mamba2":
            self.mixer_name, make = LINEAR_MIXERS["mamba2"]
            setattr(self, self.mixer_name, make(cfg))
        if self.kind == "parallel":
            self.linear_attn = _make_gla(cfg)
            self.attn_out_norm = norm()
            self.linear_out_norm = norm()
        if self.has_mlp:
            setattr(self, self._mlp_norm, norm())
        if cfg.sandwich_norm:
            self.post_attn_norm = norm()
            self.post_mlp_norm = norm()
        if cfg.is_moe_layer(i):
            self.mlp = MoE(cfg.hidden_size, cfg.moe_intermediate_size or cfg.intermediate_size,
                           cfg.num_experts, cfg.num_experts_per_tok, cfg.num_shared_experts,
                           cfg.shared_expert_intermediate_size, cfg.router_activation,
                           cfg.norm_topk_prob, expert_activation=cfg.moe_hidden_act or "silu",
                           expert_bias=cfg.moe_expert_bias, norm_eps=cfg.moe_norm_eps,
                           scaling=cfg.routed_scaling_factor, shared_gate=cfg.shared_expert_gate,
                           router_float32=cfg.router_float32, gated=cfg.mlp_gated)
        elif self.has_mlp and cfg.mlp_gated:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias,
                              activation=cfg.hidden_act, gate_multiplier=cfg.mlp_gate_multiplier,
                              down_multiplier=cfg.mlp_down_multiplier)
        elif self.has_mlp:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias,
                           activation=cfg.hidden_act)

    @property
    def rope(self) -> RopeSpec | None:
        """The RoPE of this block's softmax attention (None for a linear mixer's block)."""
        return getattr(getattr(self, "attn", None), "rope", None)

    def forward(self, x: torch.Tensor, cache: dict | None, positions: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.has_mixer:
            x = x + _scale(self._mix(getattr(self, self._mixer_norm)(x), cache, positions, rope),
                           self.residual_multiplier)
        if self.has_mlp:
            m = self.mlp(getattr(self, self._mlp_norm)(x))
            if hasattr(self, "post_mlp_norm"):
                m = self.post_mlp_norm(m)
            x = x + _scale(m, self.residual_multiplier)
        return x

    def _mix(self, h: torch.Tensor, cache: dict | None, positions: torch.Tensor,
             rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The mixer's output for the normed input ``h`` (before the residual add)."""
        if self.kind == "parallel":
            a = self.attn_out_norm(self.attn(
                h, None if cache is None else cache.setdefault("attn", {}), positions, rope))
            a = a + self.linear_out_norm(self.linear_attn(
                h, None if cache is None else cache.setdefault("linear", {}), positions))
        elif self.kind == "attn+mamba2":
            m = _scale(self.mamba(h, None if cache is None else cache.setdefault("mamba", {})),
                       self.ssm_out_multiplier)
            a = _scale(self.attn(_scale(h, self.attn_in_multiplier),
                                 None if cache is None else cache.setdefault("attn", {}),
                                 positions, rope), self.attn_out_multiplier)
            a = m + a
        elif self.kind == "gla":
            a = self.attn(h, cache, positions)
        elif self.kind in LINEAR_MIXERS:
            a = getattr(self, self.mixer_name)(h, cache)
        else:
            a = self.attn(h, cache, positions, rope)
        if hasattr(self, "post_attn_norm"):
            a = self.post_attn_norm(a)
        return a


class HybridModel(nn.Module):
    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(HybridBlock(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, style=cfg.norm_style)
        if cfg.num_sink_tokens:
            self.sink_embeddings = nn.Parameter(torch.zeros(cfg.num_sink_tokens, cfg.hidden_size))


@dataclass
class DecodeState:
    """Everything decoding carries from one token to the next."""

    layers: list[dict] = field(default_factory=list)
    seen: int = 0  # positions consumed so far, sink tokens included

    def nbytes(self) -> int:
        def walk(obj) -> int:
            if isinstance(obj, torch.Tensor):
                return obj.numel() * obj.element_size()
            if isinstance(obj, dict):
                return sum(walk(v) for v in obj.values())
            return 0
        return sum(walk(c) for c in self.layers)


class HybridForCausalLM(nn.Module):
    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.config = cfg
        self.model = HybridModel(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(
            cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tokenizer = None  # set by load_model
        # A constant prefix (sbsnn.models.prefix.ConstantPrefix): every document starts
        # from its state (start_state); None: from a fresh state.
        self.prefix = None
        if not self.model.embeddings.weight.is_meta:  # a skeleton for loading needs no init
            self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)

    # ------------------------------------------------------------------ forward
    def new_state(self) -> DecodeState:
        """A fresh decoding state: nothing seen."""
        return DecodeState(layers=[{} for _ in self.model.layers])

    def start_state(self, batch: int = 1) -> DecodeState:
        """The state a document starts from: a copy of the state after the model's
        constant prefix (``self.prefix``, :mod:`sbsnn.models.prefix`) when it has one,
        for ``batch`` sequences; else :meth:`new_state`."""
        if self.prefix is None:
            return self.new_state()
        return self.prefix.start_state(self, batch)

    def document_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """A document's token ids ``[B, L]`` as the model reads them after its constant
        prefix: without the leading BOS the prefix already holds (unchanged without a
        prefix)."""
        return ids if self.prefix is None else self.prefix.body(ids)

    def forward(self, input_ids: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        """Logits ``[B, L, vocab]`` for ``input_ids [B, L]``.

        Without ``state`` the sequence is processed on its own (training, scoring);
        with one, the tokens continue it and ``state`` is updated in place.
        """
        return self.head(self.body(input_ids, state))

    # The forward pass in its parts (pipeline stages run them on different processes):
    #   x = embed(ids, state); x = blocks(x, state); logits = head(final_norm(x, sinks))
    # with sinks = sink_rows(state) taken before blocks advance the state.
    def body(self, input_ids: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        """Every block and the final norm: hidden states ``[B, L, hidden]`` (the input of
        the head). Work that needs no logits (counting spikes) stops here."""
        sinks = self.sink_rows(state)
        return self.final_norm(self.blocks(self.embed(input_ids, state), state), sinks)

    def sink_rows(self, state: DecodeState | None = None) -> int:
        """Rows of sink tokens :meth:`embed` puts before the tokens: all of the model's at
        the start of a sequence (no ``state``, or one that has seen nothing), else none."""
        return self.config.num_sink_tokens if state is None or state.seen == 0 else 0

    def embed(self, input_ids: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        """The hidden states entering block 0 ``[B, sinks + L, hidden]``: the token
        embeddings (times ``embedding_scale``, Gemma), preceded by the sink tokens' rows at
        the start of a sequence (:meth:`sink_rows`). ``state`` is only read."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        _check_ids(input_ids, self.config.vocab_size)
        x = self.model.embeddings(input_ids)
        if self.config.embedding_scale is not None:  # Gemma: a float32 scalar in the weights' dtype
            x = x * torch.tensor(self.config.embedding_scale).to(x.dtype)
        x = _scale(x, self.config.embedding_multiplier)  # Granite, Falcon-H1: a Python float
        if self.sink_rows(state):
            sinks = self.model.sink_embeddings.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([sinks, x], dim=1)
        return x

    def blocks(self, x: torch.Tensor, state: DecodeState | None = None,
               layers: Iterable[int] | None = None) -> torch.Tensor:
        """Run blocks ``layers`` (indices, in order; default every block) on hidden states
        ``x [B, n, hidden]`` whose first row sits at position ``state.seen`` (0 without a
        state); their decoding caches and ``state.seen`` advance."""
        start = 0 if state is None else state.seen
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        tables = self.rope_tables(positions, x.dtype)
        for i in range(len(self.model.layers)) if layers is None else layers:
            layer = self.model.layers[i]
            x = layer(x, None if state is None else state.layers[i], positions,
                      tables.get(layer.rope))
        if state is not None:
            state.seen += x.shape[1]
        return x

    def final_norm(self, x: torch.Tensor, sinks: int = 0) -> torch.Tensor:
        """The last block's output without its ``sinks`` first rows, normalised: the input
        of :meth:`head`."""
        return self.model.norm(x[:, sinks:])

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from final hidden states (tied or separate head; Falcon-H1's and
        Granite's muP scalars; Gemma's soft-capping)."""
        weight = self.model.embeddings.weight if self.lm_head is None else self.lm_head.weight
        logits = _scale(F.linear(hidden, weight), self.config.logits_multiplier)
        if self.config.logits_divisor != 1.0:
            logits = logits / self.config.logits_divisor
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype
                    ) -> dict[RopeSpec, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin for ``positions``, once per distinct RoPE of the model.

        ``dynamic`` RoPE sees the sequence length so far (``max position + 1``), as
        transformers' does within one generation."""
        seq_len = int(positions[-1]) + 1 if positions.numel() else 0
        specs = {layer.rope for layer in self.model.layers if layer.rope is not None}
        return {spec: spec.cos_sin(positions, dtype, seq_len) for spec in specs}

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: DecodeState, block_size: int = 256) -> torch.Tensor:
        """Feed a long prompt in blocks (memory bounded by the block); last logits ``[B, V]``."""
        logits = None
        for s in range(0, input_ids.shape[1], block_size):
            logits = self(input_ids[:, s:s + block_size], state)[:, -1]
        if logits is None:
            raise ValueError("prefill needs at least one token")
        return logits

    # ------------------------------------------------------------------ generation
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise UnavailableError("this model has no tokenizer; load it with sbsnn.load_model, "
                                   "or set model.tokenizer, or pass token ids to stream_ids")
        return self.tokenizer

    @torch.no_grad()
    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int = 100,
                   temperature: float = 1.0, top_k: int | None = None,
                   generator: torch.Generator | None = None,
                   stop_ids: tuple[int, ...] = ()) -> Iterator[int]:
        """Yield new token ids one at a time; memory stays constant in length."""
        check_generation(max_new_tokens, temperature, top_k, None)
        if not len(prompt_ids):
            raise OptionError("the prompt is empty: give at least one token")
        _check_ids(prompt_ids, self.config.vocab_size)
        device = next(self.parameters()).device
        state = self.start_state()
        ids = self.document_ids(torch.tensor([prompt_ids], device=device))
        if ids.shape[1]:
            logits = self.prefill(ids, state)
        else:      # the prompt was the prefix's BOS alone: the prefix's own prediction
            logits = self.prefix.logits.to(device)[None]
        for _ in range(max_new_tokens):
            tok = sample(logits[0], temperature, top_k, generator)
            yield tok
            if tok in stop_ids:
                return
            logits = self(torch.tensor([[tok]], device=device), state)[:, -1]

    def stream(self, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
               top_k: int | None = None, seed: int | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated (bytes are decoded incrementally)."""
        check_generation(max_new_tokens, temperature, top_k, seed)
        if not isinstance(prompt, str):
            raise OptionError(f"prompt must be a str, got {type(prompt).__name__}")
        tok = self._require_tokenizer()
        gen = None
        if seed is not None:
            gen = torch.Generator(device=next(self.parameters()).device).manual_seed(seed)
        decoder = tok.incremental_decoder()
        eos = self.config.eos_token_id
        eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        for t in self.stream_ids(tok.encode(prompt), max_new_tokens, temperature, top_k, gen, eos):
            piece = decoder(t)
            if piece:
                yield piece

    def generate(self, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
                 top_k: int | None = None, seed: int | None = None,
                 on_text: Callable[[str], None] | None = None) -> str:
        """Continue ``prompt``; returns the new text. ``on_text`` sees each piece as it comes."""
        pieces = []
        for piece in self.stream(prompt, max_new_tokens, temperature, top_k, seed):
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)
        return "".join(pieces)


def _check_ids(ids, vocab_size: int) -> None:
    """Token ids must index the vocabulary (an out-of-range id would be an IndexError
    deep in the embedding, or with negative ids a silent wrap-around)."""
    t = torch.as_tensor(ids)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise OptionError(f"token ids must be integers, got {t.dtype}")
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise OptionError(f"token id {bad} is outside the model's vocabulary "
                              f"(0..{vocab_size - 1}); were the ids made by another tokenizer?")


MAX_NEW_TOKENS_LIMIT = 1 << 20
MAX_NEW_TOKENS_WHY = ("a million tokens already take days to decode on a CPU, and the "
                      "full-attention layers' cache grows with every token; generate in parts")


def check_generation(max_new_tokens, temperature, top_k, seed,
                     names=("max_new_tokens", "temperature", "top_k", "seed")) -> None:
    """The sampling options: max_new_tokens an int in [0, 2**20], temperature a finite
    number >= 0 (0: greedy), top_k None or an int >= 1, seed None or an int in [0, 2**64)."""
    check_int(max_new_tokens, names[0], minimum=0, maximum=MAX_NEW_TOKENS_LIMIT,
              why=MAX_NEW_TOKENS_WHY)
    check_float(temperature, names[1], minimum=0.0, hint=" (0: greedy)")
    check_int(top_k, names[2], minimum=1, none_ok=True, hint=" (leave it out to sample from all)")
    check_int(seed, names[3], minimum=0, maximum=2 ** 64 - 1, none_ok=True,
              why="torch generators take 64-bit seeds")


def sample(logits: torch.Tensor, temperature: float, top_k: int | None,
           generator: torch.Generator | None) -> int:
    if not bool(torch.isfinite(logits).all()):    # argmax of NaN would pick a token silently
        raise NonFiniteError("the model's logits hold NaN or Inf (from the activations: a "
                             "float tensor of the checkpoint holds NaN or Inf, or the "
                             "computation overflowed in this dtype); check the weights",
                             layer="lm_head", origin="activations")
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
