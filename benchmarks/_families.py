"""The family table of bench_model.py (``--families``): a ~100M-parameter random model of
each linear-mixer hybrid family, built with transformers' own classes and saved with
``save_pretrained``, then, in one process and with the same threads:

* float prefill tokens/s of one forward over ``--family-tokens`` tokens, sbsnn and
  transformers alternated round by round (load from other processes hits both alike),
  and their time ratio (goal: sbsnn <= 1.2x);
* sbsnn decode tokens/s (one token at a time) at 1k and 32k tokens of context, and the
  milliseconds per token spent in the blocks whose mixer is linear (goal: flat). The 32k
  context is built from a real 1k prefill whose full-attention caches are then extended
  with random keys and values to 32k positions (a decode step costs the same whatever
  the cached values are; prefilling 32k tokens would take minutes per family); the
  linear layers' state has the same size at any context, which the table shows;
* the decoding state's bytes at both contexts (``DecodeState.nbytes()``);
* the event simulation (``paper`` preset, ternary coding, k = 3) of up to 256 of the same
  tokens against the float forward, alternated round by round (goal: <= 3x), and whether
  its logits equal the integer path's bit for bit.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

V = 32000
# name -> (transformers config class, model class, config kwargs): ~100M parameters each.
FAMILIES = {
    "qwen3_5_text": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", dict(
        vocab_size=V, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=6, num_key_value_heads=2, head_dim=128,
        linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=96,
        linear_value_head_dim=96, tie_word_embeddings=True, max_position_embeddings=65536)),
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM", dict(
        vocab_size=V, hidden_size=640, intermediate_size=1536, num_hidden_layers=8,
        num_attention_heads=5, num_key_value_heads=1, head_dim=128,
        linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=80,
        linear_value_head_dim=80, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=512, shared_expert_intermediate_size=512,
        tie_word_embeddings=True, max_position_embeddings=65536)),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM", dict(
        vocab_size=V, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, num_local_experts=0,
        shared_intermediate_size=2048, mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128,
        mamba_n_groups=1, mamba_chunk_size=256, position_embedding_type="nope",
        layer_types=["mamba"] * 5 + ["attention"] + ["mamba"] * 5 + ["attention"],
        tie_word_embeddings=True, max_position_embeddings=65536)),
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM", dict(
        vocab_size=V, hidden_size=640, intermediate_size=1664, num_hidden_layers=10,
        num_attention_heads=10, num_key_value_heads=2, head_dim=64, mamba_d_ssm=1280,
        mamba_n_heads=20, mamba_d_head=64, mamba_d_state=64, mamba_n_groups=1,
        mamba_chunk_size=256, tie_word_embeddings=True, max_position_embeddings=65536)),
    "lfm2": ("Lfm2Config", "Lfm2ForCausalLM", dict(
        vocab_size=V, hidden_size=768, intermediate_size=3072, num_hidden_layers=14,
        num_attention_heads=12, num_key_value_heads=4,
        layer_types=["conv", "conv", "full_attention"] * 4 + ["conv", "full_attention"],
        tie_word_embeddings=True, max_position_embeddings=65536)),
}


def _build(cfg_cls: str, model_cls: str, kw: dict, directory: Path):
    import transformers

    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**kw)
    model = getattr(transformers, model_cls)(cfg).to(torch.float32).eval()
    model.save_pretrained(directory)
    return model


def _median_times(fns: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats + 1):            # round 0 warms up and is not timed
        for name in (names if r % 2 else names[::-1]):
            t = time.perf_counter()
            fns[name]()
            if r:
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _extend_attention_caches(model, state, context: int) -> None:
    """Grow every full-attention cache of ``state`` (Falcon-H1's beside its Mamba-2 too)
    to ``context`` positions with random keys and values (positions continue the real
    ones), and ``state.seen`` with them."""
    add = context - state.seen
    for block, cache in zip(model.model.layers, state.layers):
        if block.kind == "attn+mamba2":
            cache = cache.get("attn", {})
        elif block.kind != "full":
            continue
        if "k" not in cache:
            continue
        k, v = cache["k"], cache["v"]
        shape = (k.shape[0], k.shape[1], add, k.shape[3])
        cache["k"] = torch.cat([k, torch.randn(shape, dtype=k.dtype)], dim=2)
        cache["v"] = torch.cat([v, torch.randn(shape, dtype=v.dtype)], dim=2)
        cache["pos"] = torch.cat([cache["pos"], torch.arange(state.seen, context)])
    state.seen = context


LINEAR = ("gdn", "mamba2", "conv")     # blocks whose mixer is linear alone


def _decode_rate(model, state, steps: int) -> tuple[float, float]:
    """Decode tokens/s, and the milliseconds per token spent in the blocks whose mixer is
    linear (their time must not depend on the context)."""
    tok = torch.zeros(1, 1, dtype=torch.long)
    for _ in range(4):
        model(tok, state)
    spent = [0.0]
    starts: dict = {}

    def pre(block, args):
        starts[block] = time.perf_counter()

    def post(block, args, out):
        spent[0] += time.perf_counter() - starts.pop(block)

    hooks = [b.register_forward_pre_hook(pre) for b in model.model.layers if b.kind in LINEAR]
    hooks += [b.register_forward_hook(post) for b in model.model.layers if b.kind in LINEAR]
    try:
        t = time.perf_counter()
        for _ in range(steps):
            model(tok, state)
        total = time.perf_counter() - t
    finally:
        for h in hooks:
            h.remove()
    return steps / total, 1000 * spent[0] / steps


def _simulation_ratio(model, ids: torch.Tensor, repeats: int) -> str:
    """Event simulation time over float forward time on the same tokens (medians of
    ``repeats`` alternated rounds after a warm-up round), and whether the simulation's
    logits equal the integer path's bit for bit."""
    from sbsnn.converters import convert
    from sbsnn.sim import simulate

    try:
        spiking = convert(model, preset="paper", k=3.0)
        med = _median_times({"float": lambda: model(ids),
                             "simulation": lambda: simulate(spiking, ids)}, repeats)
        exact = torch.equal(simulate(spiking, ids).logits, spiking(ids)[0])
    except Exception as e:  # the table says which family cannot be simulated, and why
        return f"fails: {type(e).__name__}: {str(e)[:80]}"
    return f"{med['simulation'] / med['float']:.2f}x" + ("" if exact else " (NOT bit-identical)")


@torch.no_grad()
def run_families(threads: int, tokens: int, repeats: int, steps: int,
                 contexts=(1024, 32768), only: list[str] | None = None) -> str:
    import transformers

    import sbsnn

    torch.set_num_threads(threads)
    rows = []
    for name, (cfg_cls, model_cls, kw) in FAMILIES.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            hf = _build(cfg_cls, model_cls, kw, Path(tmp))
            ours = sbsnn.load_model(tmp)
        params = sum(p.numel() for p in ours.parameters())
        ids = torch.randint(0, V, (1, tokens), generator=torch.Generator().manual_seed(0))
        med = _median_times({"transformers": lambda: hf(ids, use_cache=False).logits,
                             "sbsnn": lambda: ours(ids)}, repeats)
        hf = None   # free the reference model before decoding
        rates, linear_ms, sizes = [], [], []
        prompt = torch.randint(0, V, (1, 1024), generator=torch.Generator().manual_seed(1))
        for ctx in contexts:
            state = ours.new_state()
            ours.prefill(prompt[:, :min(1024, ctx)], state, block_size=1024)
            if ctx > state.seen:
                _extend_attention_caches(ours, state, ctx)
            rate, ms = _decode_rate(ours, state, steps)
            rates.append(rate)
            linear_ms.append(ms)
            sizes.append(state.nbytes())
        sim = _simulation_ratio(ours, ids[:, :min(tokens, 256)], repeats)
        rows.append(
            f"| {name} | {params / 1e6:.0f}M | {tokens / med['sbsnn']:.0f} | "
            f"{tokens / med['transformers']:.0f} | **{med['sbsnn'] / med['transformers']:.2f}x** | "
            + " | ".join(f"{r:.1f}" for r in rates) + " | "
            + (" | ".join(f"{m:.1f}" for m in linear_ms) if linear_ms[0] else "n/a | n/a") + " | "
            + " | ".join(f"{s / 2**20:.1f}" for s in sizes) + f" | {sim} |")
    head = ("| family | params | sbsnn prefill tok/s | transformers prefill tok/s | "
            "time sbsnn / transformers (goal <= 1.2x) | "
            + " | ".join(f"decode tok/s @{c // 1024}k" for c in contexts) + " | "
            + " | ".join(f"linear layers ms/token @{c // 1024}k" for c in contexts) + " | "
            + " | ".join(f"state MiB @{c // 1024}k" for c in contexts)
            + " | event simulation / float forward (goal <= 3x) |")
    sep = "| --- " + "| ---: " * (4 + 3 * len(contexts) + 1) + "|"
    intro = (f"transformers {transformers.__version__}, {threads} thread(s), prefill of "
             f"{tokens} tokens ({repeats} timed rounds, median), {steps} decode steps per "
             "context (32k: attention caches extended with random keys, see _families.py)")
    return "\n".join([intro, "", head, sep, *rows])
