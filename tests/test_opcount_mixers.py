"""Operations that never spike (``sbsnn.analysis.opcount``) for the linear mixers of the
hybrid families (Gated DeltaNet, Mamba-2, the short convolution) and gated attention
(Qwen3.5): each count is written out here by hand from the sizes of a tiny model, per the
table in ``docs/report.md``, never by calling the formulas under test. The dense
projections are checked against the real modules' shapes."""

from __future__ import annotations

from torch import nn

from sbsnn.analysis.opcount import DENSE_PROJECTIONS, nonspiking_ops
from sbsnn.models import HybridConfig, HybridForCausalLM

# h 16, I 24, V 64; attention H 4, Hkv 2, D 8 (used by the attention layers only).
BASE = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, rope_theta=10000.0)
GDN = dict(num_key_heads=2, num_value_heads=4, key_head_dim=4, value_head_dim=3,
           conv_kernel_size=4, layout="qwen3_5")
MAMBA2 = dict(num_heads=4, head_dim=4, d_state=3, n_groups=2, d_conv=3, chunk_size=4)
N = 5   # tokens


def one_layer(kind: str, **extra) -> HybridConfig:
    attn = [0] if kind in ("full", "swa") else []
    return HybridConfig(**BASE, num_hidden_layers=1, layer_mixers=[kind], attn_layers=attn,
                        full_attn_layers=attn if kind == "full" else [],
                        sliding_window=3 if kind == "swa" else None, **extra)


def common(ops: dict, norm_elements: int) -> None:
    """What every one-layer model of BASE has: attn_norm, mlp_norm, the final norm (3 x 16)
    plus the mixer's own norms; residual adds 2 x 16; SwiGLU 5 x 24; lm_head 64 x 16."""
    assert ops["rmsnorm_ops"] == N * 4 * (3 * 16 + norm_elements)
    assert ops["residual_adds_ops"] == N * 2 * 16
    assert ops["swiglu_ops"] == N * 5 * 24
    assert ops["lm_head_macs"] == N * 64 * 16
    assert ops["embedding_reads"] == N * 16


def nonzero(ops: dict, prefix: str) -> dict:
    return {k: v for k, v in ops.items() if k.startswith(prefix)}


def test_gated_deltanet_hand_count():
    # Hk 2 x dk 4, Hv 4 x dv 3, conv kernel 4 with silu over q, k, v: 2*8 + 12 = 28 channels;
    # state per value head 4 x 3: 4 * 12 = 48 entries.
    ops = nonspiking_ops(one_layer("gdn", gdn=GDN), N, dense_projections=DENSE_PROJECTIONS)
    assert nonzero(ops, "gdn_") == {
        "gdn_conv_macs": N * 4 * 28,          # K MACs per channel
        "gdn_conv_ops": N * 4 * 28,           # silu: exp, add, divide, multiply
        "gdn_l2norm_ops": N * 3 * (8 + 8),    # q and k: square, sum, x * rsqrt
        "gdn_scale_ops": N * 8,               # q / sqrt(dk), per key head
        "gdn_beta_ops": N * 3 * 4,            # sigmoid per value head
        "gdn_decay_gate_ops": N * 6 * 4,      # + dt_bias, softplus (3), * -exp(A_log), exp
        "gdn_decay_ops": N * 48,              # S *= exp(g)
        "gdn_predict_macs": N * 48,           # k^T S
        "gdn_delta_ops": N * 2 * 12,          # v - k^T S, * beta
        "gdn_write_macs": N * 48,             # S += k u^T
        "gdn_readout_macs": N * 48,           # S^T q
        "gdn_out_gate_ops": N * 5 * 12,       # silu(z), multiply
    }
    common(ops, 12)                           # the gated norm over Hv x dv = 12
    # spiking projections, when left dense: in_proj_qkv 16 -> 28, z 16 -> 12, b and a
    # 16 -> 4, out_proj 12 -> 16; nothing of attention or of the other mixers.
    assert {k: v for k, v in ops.items() if k.startswith("dense_") and v} == {
        "dense_in_proj_qkv_macs": N * 16 * 28, "dense_in_proj_z_macs": N * 16 * 12,
        "dense_in_proj_b_macs": N * 16 * 4, "dense_in_proj_a_macs": N * 16 * 4,
        "dense_out_proj_macs": N * 12 * 16, "dense_gate_proj_macs": N * 16 * 24,
        "dense_up_proj_macs": N * 16 * 24, "dense_down_proj_macs": N * 24 * 16}
    assert ops["attn_qk_macs"] == ops["rope_ops"] == ops["gla_state_macs"] == 0
    assert "attn_out_gate_ops" not in ops and not nonzero(ops, "mamba2_")
    # the fused layout has the same arithmetic, projections in_proj_qkvz 16 -> 40, ba 16 -> 8
    nxt = nonspiking_ops(one_layer("gdn", gdn={**GDN, "layout": "qwen3_next"}), N,
                         dense_projections=("in_proj_qkvz", "in_proj_ba", "in_proj_qkv"))
    assert nonzero(nxt, "gdn_") == nonzero(ops, "gdn_")
    assert (nxt["dense_in_proj_qkvz_macs"], nxt["dense_in_proj_ba_macs"],
            nxt["dense_in_proj_qkv_macs"]) == (N * 16 * 40, N * 16 * 8, 0)
    # decoding at any context costs the same per token: the state does not grow
    assert nonspiking_ops(one_layer("gdn", gdn=GDN), 1, context=1000)["gdn_readout_macs"] == 48


def test_mamba2_hand_count():
    # H 4 x P 4 (d_inner 16), N 3, G 2: conv over x, B, C = 16 + 2*2*3 = 28 channels,
    # kernel 3, silu and a bias; state 4 x 4 x 3 = 48. muP: input x 0.5 (16), x segment x 2
    # (16 outputs), dt x 0.5 (4 outputs).
    cfg = one_layer("mamba2", mamba2={**MAMBA2, "in_multiplier": 0.5,
                                      "zxbcdt_multipliers": (1.0, 2.0, 1.0, 1.0, 0.5)})
    ops = nonspiking_ops(cfg, N, dense_projections=("in_proj", "out_proj"))
    assert nonzero(ops, "mamba2_") == {
        "mamba2_conv_macs": N * 3 * 28,
        "mamba2_conv_ops": N * (4 + 1) * 28,  # silu + bias
        "mamba2_dt_ops": N * 6 * 4,           # + dt_bias, softplus (3), dt * A, exp
        "mamba2_decay_ops": N * 48,
        "mamba2_input_ops": N * 16,           # dt * x
        "mamba2_write_macs": N * 48,          # (dt x) B^T
        "mamba2_readout_macs": N * 48,        # S C
        "mamba2_skip_ops": N * 2 * 16,        # D * x, add
        "mamba2_out_gate_ops": N * 5 * 16,
        "mamba2_mup_ops": N * (16 + 16 + 4),
    }
    common(ops, 16)                           # group-wise gated norm over d_inner
    # in_proj 16 -> z 16 + xBC 28 + dt 4 = 48; out_proj 16 -> 16
    assert (ops["dense_in_proj_macs"], ops["dense_out_proj_macs"]) == (N * 16 * 48, N * 16 * 16)
    # no norm, no conv bias, no multipliers
    plain = nonspiking_ops(one_layer("mamba2", mamba2={**MAMBA2, "rms_norm": False,
                                                       "conv_bias": False}), N)
    assert plain["mamba2_conv_ops"] == N * 4 * 28 and plain["mamba2_mup_ops"] == 0
    assert plain["mamba2_out_gate_ops"] == N * 5 * 16
    common(plain, 0)


def test_short_conv_hand_count():
    # kernel 3 over h = 16 channels, with biases; gates B * x and C * z.
    ops = nonspiking_ops(one_layer("conv", short_conv=dict(L_cache=3, bias=True)), N,
                         dense_projections=("in_proj", "out_proj", "q_proj"))
    assert nonzero(ops, "shortconv_") == {"shortconv_macs": N * 3 * 16,
                                          "shortconv_bias_ops": N * 16,
                                          "shortconv_gate_ops": N * 2 * 16}
    common(ops, 0)
    # in_proj 16 -> 3 x 16, out_proj 16 -> 16
    assert (ops["dense_in_proj_macs"], ops["dense_out_proj_macs"], ops["dense_q_proj_macs"]) == (
        N * 16 * 48, N * 16 * 16, 0)
    no_bias = nonspiking_ops(one_layer("conv", short_conv=dict(L_cache=2)), N)
    assert no_bias["shortconv_macs"] == N * 2 * 16 and no_bias["shortconv_bias_ops"] == 0


def test_gated_attention_hand_count():
    # Qwen3.5's attention: q/k norms per head, RoPE on 8 * 0.25 = 2 channels per head, the
    # sigmoid output gate. 5 fresh tokens see 1 + 2 + 3 + 4 + 5 = 15 keys.
    cfg = one_layer("full", attn_output_gate=True, qk_norm=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                     "partial_rotary_factor": 0.25})
    ops = nonspiking_ops(cfg, N, dense_projections=("q_proj", "k_proj", "o_proj"))
    assert ops["attn_qk_macs"] == ops["attn_av_macs"] == 4 * 8 * 15
    assert ops["attn_softmax_ops"] == 5 * 4 * 15
    assert ops["attn_scale_ops"] == N * 4 * 8
    assert ops["rope_ops"] == N * 3 * (4 + 2) * 2
    assert ops["attn_out_gate_ops"] == N * 4 * 4 * 8      # sigmoid (3) and multiply
    common(ops, (4 + 2) * 8)                              # q and k norms
    # q_proj gives the query and the gate: 16 -> 2 x 32
    assert ops["dense_q_proj_macs"] == N * 16 * 64
    assert ops["dense_k_proj_macs"] == N * 16 * 16 and ops["dense_o_proj_macs"] == N * 32 * 16
    plain = nonspiking_ops(one_layer("full"), N)
    assert "attn_out_gate_ops" not in plain and plain["rope_ops"] == N * 3 * 6 * 8


MIXED = dict(**BASE, num_hidden_layers=5, layer_mixers=["gdn", "mamba2", "conv", "full", "swa"],
             attn_layers=[3, 4], full_attn_layers=[3], sliding_window=3, attn_output_gate=True,
             gdn=GDN, mamba2=MAMBA2, short_conv=dict(L_cache=3))


def test_mixed_model_sums_its_layers_and_projections_match_the_modules():
    cfg = HybridConfig(**MIXED)
    ops = nonspiking_ops(cfg, N, dense_projections=DENSE_PROJECTIONS)
    one = {k: nonspiking_ops(one_layer(k, **{a: MIXED[a] for a in ("gdn", "mamba2", "short_conv",
                                                                   "attn_output_gate")},
                                       **({"sliding_window": 3} if k == "swa" else {})), N)
           for k in ("gdn", "mamba2", "conv")}
    for k, prefix in (("gdn", "gdn_"), ("mamba2", "mamba2_"), ("conv", "shortconv_")):
        assert nonzero(ops, prefix) == nonzero(one[k], prefix)
    # every dense projection count is the real module's in x out, summed over the layers
    model = HybridForCausalLM(cfg)
    real: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != "lm_head":
            leaf = name.rpartition(".")[2]
            real[leaf] = real.get(leaf, 0) + m.in_features * m.out_features
    got = {k[len("dense_"):-len("_macs")]: v // N for k, v in ops.items()
           if k.startswith("dense_") and v}
    assert got == real
    assert set(real) <= set(DENSE_PROJECTIONS)


def test_falcon_h1_layer_and_mup_scalars_hand_count():
    """A Falcon-H1 layer (attention and Mamba-2 side by side, one more add to sum them)
    with every muP scalar away from 1, and Granite's NoPE attention (no RoPE ops)."""
    cfg = HybridConfig(**BASE, num_hidden_layers=1, layer_mixers=["attn+mamba2"],
                       attn_layers=[0], full_attn_layers=[0], sliding_window=None,
                       mamba2=dict(MAMBA2, in_multiplier=2.0), embedding_multiplier=3.0,
                       residual_multiplier=0.5, logits_multiplier=0.2, logits_divisor=2.0,
                       key_multiplier=0.9, attn_in_multiplier=0.8, attn_out_multiplier=1.1,
                       ssm_out_multiplier=0.7, mlp_gate_multiplier=1.3, mlp_down_multiplier=0.6)
    ops = nonspiking_ops(cfg, N)
    # per layer and token: residual 2 x 16, keys 2 x 8, attention in / out and Mamba-2 out
    # 3 x 16, MLP gate 24, MLP out 16; once per token: embeddings 16, logits 2 x 64.
    assert ops["mup_ops"] == N * (2 * 16 + 2 * 8 + 3 * 16 + 24 + 16) + N * (16 + 2 * 64)
    assert ops["residual_adds_ops"] == N * 3 * 16              # the two branches summed too
    assert ops["mamba2_decay_ops"] == N * 4 * 4 * 3            # the Mamba-2 branch: H P N
    assert ops["mamba2_mup_ops"] == N * 16                     # input times 2.0
    assert ops["attn_scale_ops"] == N * 4 * 8                  # the attention branch
    assert ops["rope_ops"] == N * 3 * (4 + 2) * 8
    nope = HybridConfig(**{**BASE, "rope_theta": 10000.0}, num_hidden_layers=1,
                        layer_mixers=["full"], attn_layers=[0], full_attn_layers=[0],
                        sliding_window=None, attn_rope=False)
    ops = nonspiking_ops(nope, N)
    assert ops["rope_ops"] == 0 and ops["attn_scale_ops"] == N * 4 * 8
    assert "mup_ops" not in ops


def test_nemotron_h_blocks_of_one_sublayer_and_gateless_mlps_hand_count():
    """Nemotron-H: a Mamba-2 block, an MLP block and an MoE block, each one norm and one
    residual add; the MLPs up/down only, their non-spiking work the activation alone."""
    cfg = HybridConfig(**BASE, num_hidden_layers=3, layer_mixers=["mamba2", "mlp", "mlp"],
                       attn_layers=[], full_attn_layers=[], sliding_window=None,
                       mamba2=MAMBA2, block_mlp=False, mlp_gated=False, hidden_act="relu2",
                       num_experts=4, num_experts_per_tok=2, moe_intermediate_size=6,
                       num_shared_experts=1, shared_expert_intermediate_size=10,
                       dense_layers=[0, 1], moe_expert_bias=True, moe_hidden_act="relu2")
    ops = nonspiking_ops(cfg, N, dense_projections=("gate_proj", "up_proj", "down_proj",
                                                    "router"))
    assert "swiglu_ops" not in ops
    # the MLP layer: 24 activations; the MoE layer: 2 experts of 6 and the shared one of 10
    assert ops["mlp_act_ops"] == N * 4 * (24 + 2 * 6 + 10)
    assert ops["rmsnorm_ops"] == N * 4 * (3 * 16 + 16 + 16)   # 3 block norms, final, Mamba's gated
    assert ops["residual_adds_ops"] == N * 3 * 16
    assert ops["moe_router_ops"] == N * 2 * 4
    assert ops["moe_combine_ops"] == N * 2 * 16 * (2 + 1)
    assert ops["dense_gate_proj_macs"] == 0                    # no gate anywhere
    assert ops["dense_up_proj_macs"] == ops["dense_down_proj_macs"] == N * 16 * (24 + 2 * 6 + 10)
    assert ops["dense_router_macs"] == N * 16 * 4
    model = HybridForCausalLM(cfg)
    ups = {n: m for n, m in model.named_modules() if n.endswith("up_proj")}
    assert {n: m.out_features for n, m in ups.items()} == {
        "model.layers.1.mlp.up_proj": 24, "model.layers.2.mlp.shared_experts.0.up_proj": 10,
        **{f"model.layers.2.mlp.experts.{e}.up_proj": 6 for e in range(4)}}
    assert not [n for n, _ in model.named_modules() if n.endswith("gate_proj")]
    assert [sorted(n for n, _ in b.named_children()) for b in model.model.layers] == [
        ["mamba", "norm"], ["mlp", "norm"], ["mlp", "norm"]]
