"""Energy of a spiking model from its operation counts, next to dense baselines.

Everything here works from plain numbers: per-layer counters (a
:class:`~sbsnn.sim.engine.LayerCounters`, its ``to_dict()``, or any object or dict with the
same fields) and cost profiles stored as JSON data files in ``analysis/profiles/``
(read and checked by :mod:`sbsnn.analysis.energy_profiles`; every constant carries its
value, unit, basis and source). SpikingBrain's own figures and its Eq. 24 are in
:mod:`sbsnn.analysis.spikingbrain`; this module re-exports the profile names and
:func:`spikingbrain_energy_per_mac`.

Notation, per spiking linear layer (summed over all its calls)
--------------------------------------------------------------
``N_in``, ``N_out``  in and out features; ``n`` tokens; ``elements = n * N_in``;
``nonzero``          input elements with a nonzero spike count;
``theta``            input spike events, ``events_pos + events_neg``: a negative spike is an
                     event like a positive one (ternary and bitwise codings), never a dense MAC;
``SOP``              synaptic operations ``theta * N_out`` (each event adds one weight
                     column: its fan-out is every output);
``M``                dense MACs ``n * N_in * N_out``;
``S``                token-steps ``slots / N_in`` = sum over calls of ``tokens * T`` (T the
                     call's global number of time steps);
``G``                weight groups ``ceil(N_in / group_size)`` (one integer accumulator per
                     group and output, see ``converters/quant.py``);
``R``                weight rows a dense layer fetches: ``channel_calls`` (every input channel
                     in every call); ``A = channel_calls - silent_channels`` the rows of
                     channels that spiked at least once in the call (silent fraction
                     ``silent_channels / channel_calls`` from the counters);
``bpr(b)``           blocks per weight row ``ceil(N_out * b / 8 / block_bytes)`` for ``b``-bit
                     weights (a block is ``block_bytes`` contiguous weight bytes);
``bias``             1 if the layer has a bias (dict key ``bias``; default 1).

Estimate (a): SpikingBrain-compatible (report section 5.5, Eq. 24)
------------------------------------------------------------------
* spiking: ``compute = SOP * E_int8_add``. Per MAC-equivalent (per dense MAC, i.e. per
  (input element x output) pair): ``SOP * E_add / M = (theta / elements) * E_add`` = mean
  spikes per element x E_INT8_add (SpikingBrain-7B's figures:
  :data:`~sbsnn.analysis.spikingbrain.SPIKINGBRAIN_7B_EQ24`).
* baselines: ``fp16_dense = M * E_fp16_mac``, ``int8_dense = M * E_int8_mac``,
  ``int8_zero_skip = nonzero * N_out * E_int8_mac``.

Estimate (b): arithmetic the formula leaves out
-----------------------------------------------
* ``compute = SOP * E_int32_add``: the accumulators hold sums of INT8 weights, so the add
  is 32 bits wide (a spike of -1 subtracts: same cost).
* ``shift`` (bitwise and two's-complement codings only): step ``t`` weighs ``2^(T-1-t)``;
  applied by Horner's rule, ``acc <- 2 * acc + (events of step t)``: one doubling (priced
  as an INT32 add) per group accumulator per output per token-step,
  ``S * N_out * G`` shifts. (Shifting each event's weight column instead would cost one
  shift per synaptic op, ``SOP``, far more.) Binary and ternary steps all weigh 1: none.
* ``threshold`` (``V_th = mean|x| / k``, counts ``round(x / V_th)``), FP16:
  per token ``N_in`` adds (sum of |x|; the abs is a sign-bit clear, free), one multiply by
  ``1/(k N_in)`` and one reciprocal of ``V_th`` (priced as a multiply: a division costs
  more); per input element one multiply by ``1/V_th`` and one round (priced as an add):
  ``adds = 2 * elements``, ``mults = 2 * n + elements``.
* ``rescale`` (``y = V_th * sum_g scale_g * acc_g + b``), in ``rescale_precision`` (FP32
  by default: the accumulators are 32-bit): per token and output ``G`` multiplies by the
  group scales, ``G - 1`` adds across groups, one multiply by ``V_th``, one bias add:
  ``mults = n * N_out * (G + 1)``, ``adds = n * N_out * (G - 1 + bias)``.
* baselines: ``fp16_dense = M * E_fp16_mac`` (no quantization); ``int8_dense =
  M * E_int8_mac_int32_acc`` plus the same per-token activation quantization (threshold
  counts) and the same rescale; ``int8_zero_skip`` as ``int8_dense`` with
  ``nonzero * N_out`` MACs.

Estimate (c): memory-aware (Lemaire et al., ICONIP 2022, arXiv 2210.13107), plus a DRAM/HBM tier
-------------------------------------------------------------------------------------------------
All of (b), plus, each count times the energy of one access:

=====================  ======================================  ==========================
term                   spiking layer                           dense baselines
=====================  ======================================  ==========================
weight_reads (SRAM)    theta * N_out                           MACs (M, or nonzero*N_out)
weight_fetch (blocks)  A * bpr(weight_bits)                    dense: R * bpr(16) FP16,
                                                               R * bpr(weight_bits) INT8;
                                                               zero-skip: A * bpr(weight_bits)
input_reads            theta                                   n * N_in
accumulator_reads      theta * N_out + S * N_out * G           0 (accumulate in a register)
accumulator_writes     theta * N_out + S * N_out * G           0
output_writes          n * N_out                               n * N_out
=====================  ======================================  ==========================

Lemaire's terms for a fully connected layer with ``theta_in`` input spikes are: synaptic
adds ``theta_in N_out``; weight reads ``theta_in N_out``; input reads ``theta_in``;
potential reads and writes ``theta_in N_out + T N_out`` each; output writes ``theta_out``;
the ANN: ``N_in N_out`` MACs and weight reads. Here ``T N_out`` becomes ``S * N_out * G``
(every token's T steps, one accumulator per weight group); ``theta_out`` becomes
``n * N_out`` because a SpikingBrain layer emits a real-valued output (the next layer
makes its own spikes); the dense input reads and output writes are added so both sides
move the same activations.

An on-chip access costs Lemaire's SRAM fit ``E(bits) = sram_fit_slope * bits +
sram_fit_intercept`` per value read or written (one access per value, as Lemaire counts),
where ``bits`` is the capacity of the buffer accessed: weights, one weight row
``N_out * b`` (the whole layer ``N_in * N_out * b`` with ``weight_memory="sram"``);
potentials ``G * N_out * acc_bits``; inputs ``N_in * input_bits`` (16 for FP16); outputs
``N_out * output_bits``. ``sram_bits={"weights": ..., ...}`` overrides a capacity. The fit
only holds on chip (about 1 MB at most): LLM weights live off chip, so each weight row a
call needs is fetched once per call, block by block, from ``weight_memory``: ``"dram"``
(``block_bytes * 8 / 64 * dram_access_64b`` per block) or ``"hbm"`` (``block_bytes * 8 *
hbm2_access_per_bit``); a silent channel's row is never fetched. A buffer above 1 MB
(e.g. the potentials of a wide layer) is flagged in the report's notes: the fit is then
extrapolated. The dense side accumulates in registers (no potential traffic), as in
Lemaire's ANN model, and both sides read one value per access (packing several 8-bit
weights into one 64-bit word would cut weight reads on both sides).

Other profiles
--------------
* per-op neuromorphic profile (has ``synaptic_op``; Loihi): (a) ``SOP * synaptic_op``;
  (b) adds ``S * N_out`` neuron updates (one per output per token-step) at
  ``neuron_update_active`` (or ``_inactive``); the threshold and rescale are not on such a
  chip and are not priced. (c) is not applicable (the per-op figures include on-core
  memory; the source prices no off-chip tier).
* all-in profile (``all_in: true``; TrueNorth): (a) = (b) = (c) = ``SOP * synaptic_event``
  and nothing else is added.
* Baselines are always priced by ``baseline_profile`` (``horowitz45`` by default), also when
  the spiking side uses Loihi or TrueNorth, and say so.

A profile lacking a constant an estimate needs marks that estimate ``applicable: false``
with the missing keys listed (``strict=True`` raises :class:`ProfileError` instead).

Operations that never spike (``sbsnn.analysis.opcount.nonspiking_ops``) are priced apart
at ``nonspiking_precision`` by ``baseline_profile``: ``*_macs`` at the MAC cost, ``*_ops`` at
the multiply cost (an add is cheaper, an exp dearer), other keys counted but not priced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from sbsnn.analysis.energy_profiles import (BASES, Constant, EnergyProfile, ProfileError,
                                            list_profiles, load_profile, profile_from_dict)
from sbsnn.analysis.spikingbrain import spikingbrain_energy_per_mac
from sbsnn.neurons import CODINGS

__all__ = [
    "BASES", "COMPONENTS", "COUNT_KEYS", "ESTIMATES", "SCENARIOS", "Constant", "EnergyProfile",
    "EnergyReport", "ProfileError", "estimate_energy", "list_profiles", "load_profile",
    "profile_from_dict", "spikingbrain_energy_per_mac",
]

ESTIMATES = ("a_spikingbrain", "b_arithmetic", "c_memory")
SCENARIOS = ("snn", "fp16_dense", "int8_dense", "int8_zero_skip")
BASELINES = SCENARIOS[1:]
COMPONENTS = ("compute", "shift", "neuron_update", "threshold", "rescale", "weight_reads",
              "weight_fetch", "input_reads", "accumulator_reads", "accumulator_writes",
              "output_writes")
GROUPS = {
    "compute": ("compute", "shift", "neuron_update"),
    "threshold_rescale": ("threshold", "rescale"),
    "weight_traffic": ("weight_reads", "weight_fetch"),
    "accumulator_traffic": ("accumulator_reads", "accumulator_writes"),
    "io_traffic": ("input_reads", "output_writes"),
}
COUNT_KEYS = ("synaptic_ops", "macs", "shifts", "neuron_updates", "threshold_adds",
              "threshold_mults", "rescale_adds", "rescale_mults", "weight_reads",
              "weight_blocks", "input_reads", "accumulator_reads", "accumulator_writes",
              "output_writes")
SHIFT_CODINGS = ("bitwise", "twos_complement")
_REQUIRED_LAYER_KEYS = ("in_features", "out_features", "tokens", "elements", "nonzero",
                        "events_pos", "events_neg", "slots", "silent_channels", "channel_calls")
_SRAM_FIT_MAX_BITS = 8 * 2 ** 20  # Lemaire's fit is meant for on-chip sizes up to about 1 MB


# ============================================================================ counts
def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def _get(layer: Any, key: str, default: Any = None) -> Any:
    if isinstance(layer, Mapping):
        return layer.get(key, default)
    return getattr(layer, key, default)


def _layer_counts(layer: Any, index: int, group_size: int) -> dict:
    name = _get(layer, "name") or f"layer{index}"
    missing = [k for k in _REQUIRED_LAYER_KEYS if _get(layer, k) is None]
    if missing:
        raise ValueError(f"layer {name!r}: missing counter(s) {missing}; estimate_energy needs "
                         f"{', '.join(_REQUIRED_LAYER_KEYS)} (LayerCounters or its to_dict())")
    c = {k: _get(layer, k) for k in _REQUIRED_LAYER_KEYS}
    for k, v in c.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"layer {name!r}: counter {k!r} must be a non-negative integer, got {v!r}")
    N_in, N_out, n = c["in_features"], c["out_features"], c["tokens"]
    if N_in < 1 or N_out < 1:
        raise ValueError(f"layer {name!r}: in_features and out_features must be >= 1")
    if c["elements"] != n * N_in:
        raise ValueError(f"layer {name!r}: elements ({c['elements']}) != tokens x in_features "
                         f"({n} x {N_in})")
    if c["nonzero"] > c["elements"]:
        raise ValueError(f"layer {name!r}: nonzero ({c['nonzero']}) > elements ({c['elements']})")
    if c["silent_channels"] > c["channel_calls"]:
        raise ValueError(f"layer {name!r}: silent_channels > channel_calls")
    gs = _get(layer, "group_size", None) or group_size
    G = -(-N_in // gs)
    S = c["slots"] / N_in
    S = int(S) if float(S).is_integer() else S
    events = c["events_pos"] + c["events_neg"]
    return {
        "name": name, "in_features": N_in, "out_features": N_out, "tokens": n,
        "calls": c["channel_calls"] / N_in if c["channel_calls"] % N_in else c["channel_calls"] // N_in,
        "elements": c["elements"], "nonzero": c["nonzero"],
        "events_pos": c["events_pos"], "events_neg": c["events_neg"], "events": events,
        "synaptic_ops": events * N_out, "dense_macs": n * N_in * N_out,
        "token_steps": S, "groups": G, "group_size": gs,
        "bias": 1 if _get(layer, "bias", True) else 0,
        "channel_calls": c["channel_calls"], "silent_channels": c["silent_channels"],
        "active_channel_calls": c["channel_calls"] - c["silent_channels"],
        "silent_channel_fraction": _div(c["silent_channels"], c["channel_calls"]) or 0.0,
        "spikes_per_element": _div(events, c["elements"]) or 0.0,
        "zero_fraction": 1 - c["nonzero"] / c["elements"] if c["elements"] else 0.0,
    }


# ============================================================================ pricing
class _Prices:
    """Looks constants up in one profile, remembering the ones it lacks (priced NaN)."""

    def __init__(self, profile: EnergyProfile):
        self.profile = profile
        self.missing: list[str] = []

    def __call__(self, key: str) -> float:
        c = self.profile.constants.get(key)
        if c is None:
            if key not in self.missing:
                self.missing.append(key)
            return math.nan
        return c.value

    def sram(self, bits: float) -> float:
        return self("sram_fit_slope") * bits + self("sram_fit_intercept")


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _scenario(prices: _Prices, counts: dict, pj: dict, note: str | None = None,
              applicable: bool = True) -> dict:
    comps = {k: 0.0 for k in COMPONENTS}
    comps.update(pj)
    cnt = {k: 0 for k in COUNT_KEYS}
    cnt.update(counts)
    ok = applicable and not prices.missing
    comps_out = {k: _clean(float(v)) if ok else None for k, v in comps.items()}
    return {
        "applicable": ok,
        "total_pj": sum(comps_out.values()) if ok else None,
        "components_pj": comps_out,
        "groups_pj": {g: (sum(comps_out[k] for k in ks) if ok else None) for g, ks in GROUPS.items()},
        "counts": cnt,
        "missing": list(prices.missing),
        "priced_by": prices.profile.name,
        "note": note,
    }


def _not_applicable(profile: EnergyProfile, note: str) -> dict:
    return _scenario(_Prices(profile), {}, {}, note=note, applicable=False)


@dataclass
class _Opts:
    coding: str
    block_bytes: int
    weight_bits: int
    weight_memory: str
    acc_bits: int
    input_bits: int
    output_bits: int
    rescale_precision: str
    neuron_update: str
    sram_bits: dict


def _threshold_counts(c: dict) -> dict:
    return {"threshold_adds": 2 * c["elements"], "threshold_mults": 2 * c["tokens"] + c["elements"]}


def _rescale_counts(c: dict) -> dict:
    per = c["tokens"] * c["out_features"]
    return {"rescale_adds": per * (c["groups"] - 1 + c["bias"]), "rescale_mults": per * (c["groups"] + 1)}


def _quant_terms(P: _Prices, c: dict, o: _Opts) -> tuple[dict, dict]:
    counts = {**_threshold_counts(c), **_rescale_counts(c)}
    rp = o.rescale_precision
    pj = {"threshold": counts["threshold_adds"] * P("fp16_add") + counts["threshold_mults"] * P("fp16_mult"),
          "rescale": counts["rescale_adds"] * P(f"{rp}_add") + counts["rescale_mults"] * P(f"{rp}_mult")}
    return counts, pj


def _sram_sizes(c: dict, o: _Opts, weight_bits: int, input_bits: int) -> dict:
    N_in, N_out = c["in_features"], c["out_features"]
    sizes = {
        "weights": (N_in * N_out if o.weight_memory == "sram" else N_out) * weight_bits,
        "potentials": c["groups"] * N_out * o.acc_bits,
        "inputs": N_in * input_bits,
        "outputs": N_out * o.output_bits,
    }
    sizes.update(o.sram_bits)
    return sizes


def _block_pj(P: _Prices, o: _Opts) -> float:
    if o.weight_memory == "dram":
        return o.block_bytes * 8 / 64 * P("dram_access_64b")
    if o.weight_memory == "hbm":
        return o.block_bytes * 8 * P("hbm2_access_per_bit")
    return 0.0


def _blocks_per_row(c: dict, bits: int, o: _Opts) -> int:
    return -(-(c["out_features"] * bits) // (8 * o.block_bytes))


def _memory_terms(P: _Prices, c: dict, o: _Opts, *, weight_reads: int, rows: int, weight_bits: int,
                  input_reads: int, input_bits: int, acc_rw: int) -> tuple[dict, dict]:
    sz = _sram_sizes(c, o, weight_bits, input_bits)
    blocks = 0 if o.weight_memory == "sram" else rows * _blocks_per_row(c, weight_bits, o)
    out_writes = c["tokens"] * c["out_features"]
    counts = {"weight_reads": weight_reads, "weight_blocks": blocks, "input_reads": input_reads,
              "accumulator_reads": acc_rw, "accumulator_writes": acc_rw, "output_writes": out_writes}
    pj = {"weight_reads": weight_reads * P.sram(sz["weights"]),
          "weight_fetch": blocks * _block_pj(P, o),
          "input_reads": input_reads * P.sram(sz["inputs"]),
          "accumulator_reads": acc_rw * P.sram(sz["potentials"]) if acc_rw else 0.0,
          "accumulator_writes": acc_rw * P.sram(sz["potentials"]) if acc_rw else 0.0,
          "output_writes": out_writes * P.sram(sz["outputs"])}
    return counts, pj


def _snn(est: str, prof: EnergyProfile, c: dict, o: _Opts) -> dict:
    P = _Prices(prof)
    SOP, N_out, G, S = c["synaptic_ops"], c["out_features"], c["groups"], c["token_steps"]
    kind = prof.kind
    if kind == "all_in":
        note = "all-in figure: synaptic events x energy per event, nothing added"
        if est == "c_memory":
            note += ("; the chip has no off-chip tier (an LLM's weights do not fit on it), so "
                     "beside baselines that fetch weights from DRAM/HBM this flatters it")
        return _scenario(P, {"synaptic_ops": SOP}, {"compute": SOP * P("synaptic_event")}, note=note)
    if kind == "per_op":
        if est == "c_memory":
            return _not_applicable(prof, "per-op neuromorphic figures already include on-core "
                                         "memory and the source prices no off-chip tier")
        counts, pj = {"synaptic_ops": SOP}, {"compute": SOP * P("synaptic_op")}
        note = None
        if est == "b_arithmetic":
            counts["neuron_updates"] = S * N_out
            pj["neuron_update"] = S * N_out * P(f"neuron_update_{o.neuron_update}")
            note = ("neuron updates: one per output per token-step; threshold and rescale run "
                    "off this chip and are not priced")
        return _scenario(P, counts, pj, note=note)
    if est == "a_spikingbrain":
        return _scenario(P, {"synaptic_ops": SOP}, {"compute": SOP * P("int8_add")})
    counts, pj = _quant_terms(P, c, o)
    counts["synaptic_ops"] = SOP
    pj["compute"] = SOP * P("int32_add")
    if o.coding in SHIFT_CODINGS:
        counts["shifts"] = S * N_out * G
        pj["shift"] = counts["shifts"] * P("int32_add")
    if est == "c_memory":
        mc, mp = _memory_terms(P, c, o, weight_reads=SOP, rows=c["active_channel_calls"],
                               weight_bits=o.weight_bits, input_reads=c["events"],
                               input_bits=o.input_bits, acc_rw=SOP + S * N_out * G)
        counts.update(mc)
        pj.update(mp)
    return _scenario(P, counts, pj)


def _baseline(scn: str, est: str, prof: EnergyProfile, c: dict, o: _Opts) -> dict:
    P = _Prices(prof)
    skip = scn == "int8_zero_skip"
    macs = c["nonzero"] * c["out_features"] if skip else c["dense_macs"]
    counts: dict = {"macs": macs}
    pj: dict = {}
    if scn == "fp16_dense":
        pj["compute"] = macs * P("fp16_mac")
        wbits, ibits = 16, 16
    else:
        wbits, ibits = o.weight_bits, o.input_bits
        if est == "a_spikingbrain":
            pj["compute"] = macs * P("int8_mac")
        else:
            pj["compute"] = macs * P("int8_mac_int32_acc")
            qc, qp = _quant_terms(P, c, o)
            counts.update(qc)
            pj.update(qp)
    if est == "c_memory":
        rows = c["active_channel_calls"] if skip else c["channel_calls"]
        mc, mp = _memory_terms(P, c, o, weight_reads=macs, rows=rows, weight_bits=wbits,
                               input_reads=c["elements"], input_bits=ibits, acc_rw=0)
        counts.update(mc)
        pj.update(mp)
    return _scenario(P, counts, pj)


def _comparison(snn_total: float | None, scen: dict) -> dict:
    out = {}
    for b in BASELINES:
        base = scen[b]["total_pj"]
        if snn_total is None or base is None:
            out[b] = {"reduction": None, "ratio": None}
        else:
            out[b] = {"reduction": _div(base - snn_total, base), "ratio": _div(base, snn_total)}
    return out


# ============================================================================ report
def format_pj(x: float | None) -> str:
    """An energy in picojoules, in the largest unit that keeps it >= 1 ("n/a" for None)."""
    if x is None:
        return "n/a"
    for unit, f in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x:.3g} pJ"


@dataclass
class EnergyReport:
    """Energy per layer and in total, three estimates x (spiking + three baselines), pJ."""

    profile: str
    baseline_profile: str
    coding: str
    params: dict
    per_layer: list[dict]
    totals: dict
    nonspiking: dict | None = None
    notes: list[str] = field(default_factory=list)
    profiles: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"profile": self.profile, "baseline_profile": self.baseline_profile,
                "coding": self.coding, "params": dict(self.params),
                "per_layer": self.per_layer, "totals": self.totals,
                "nonspiking": self.nonspiking, "notes": list(self.notes),
                "profiles": self.profiles}

    def format(self) -> str:
        """A short text table of the totals."""
        fmt = format_pj
        lines = [f"energy ({self.coding} coding; spiking side: {self.profile}, "
                 f"baselines: {self.baseline_profile})",
                 f"  {'estimate':<16}" + "".join(f"{s:>16}" for s in SCENARIOS) + f"{'vs fp16':>10}{'vs int8':>10}"]
        for est in ESTIMATES:
            t = self.totals["estimates"][est]
            cmp_ = t["comparison"]
            red = [cmp_[b]["reduction"] for b in ("fp16_dense", "int8_dense")]
            lines.append(f"  {est:<16}" + "".join(f"{fmt(t[s]['total_pj']):>16}" for s in SCENARIOS)
                         + "".join(f"{'n/a' if r is None else f'{-100 * r:+.1f}%':>10}" for r in red))
        if self.nonspiking is not None:
            lines.append(f"  non-spiking operations ({self.params['nonspiking_precision']}): "
                         f"{fmt(self.nonspiking['total_pj'])}, the same in every column")
        return "\n".join(lines)


def _sum_scenarios(items: list[dict]) -> dict:
    ok = all(s["applicable"] for s in items) and bool(items)
    out = {
        "applicable": ok,
        "total_pj": sum(s["total_pj"] for s in items) if ok else None,
        "components_pj": {k: (sum(s["components_pj"][k] for s in items) if ok else None) for k in COMPONENTS},
        "groups_pj": {g: (sum(s["groups_pj"][g] for s in items) if ok else None) for g in GROUPS},
        "counts": {k: sum(s["counts"][k] for s in items) for k in COUNT_KEYS},
        "missing": sorted({m for s in items for m in s["missing"]}),
        "priced_by": items[0]["priced_by"] if items else None,
        "note": items[0]["note"] if items else None,
    }
    return out


def _price_nonspiking(ops: Mapping[str, int], prof: EnergyProfile, precision: str) -> dict:
    P = _Prices(prof)
    mac, op = P(f"{precision}_mac"), P(f"{precision}_mult")
    comps, unpriced = {}, {}
    for k, v in ops.items():
        if k.startswith("total_"):
            continue
        if k.endswith("_macs"):
            comps[k] = {"count": int(v), "pj": v * mac}
        elif k.endswith("_ops"):
            comps[k] = {"count": int(v), "pj": v * op}
        else:
            unpriced[k] = int(v)
    ok = not P.missing
    for d in comps.values():
        d["pj"] = _clean(d["pj"]) if ok else None
    return {"applicable": ok, "precision": precision, "priced_by": prof.name,
            "total_pj": sum(d["pj"] for d in comps.values()) if ok else None,
            "macs": sum(v["count"] for k, v in comps.items() if k.endswith("_macs")),
            "ops": sum(v["count"] for k, v in comps.items() if k.endswith("_ops")),
            "components": comps, "unpriced_counts": unpriced, "missing": list(P.missing)}


def _as_layers(layers: Any) -> list:
    if hasattr(layers, "layers") and not isinstance(layers, Mapping):
        layers = layers.layers  # a SimResult
    if isinstance(layers, Mapping):
        if all(k in layers for k in ("in_features", "out_features")):
            return [layers]  # a single layer's dict
        return list(layers.values())
    return list(layers)


def estimate_energy(layers: Iterable[Any], coding: str,
                    profile: "str | Path | EnergyProfile" = "horowitz45",
                    nonspiking: Mapping[str, int] | None = None,
                    block_bytes: int = 64, weight_bits: int = 8, *,
                    baseline_profile: "str | Path | EnergyProfile" = "horowitz45",
                    weight_memory: str = "dram", group_size: int = 128, acc_bits: int = 32,
                    input_bits: int = 8, output_bits: int = 16,
                    rescale_precision: str = "fp32", nonspiking_precision: str = "fp16",
                    neuron_update: str = "active", sram_bits: Mapping[str, int] | None = None,
                    strict: bool = False) -> EnergyReport:
    """Energy of the spiking layers (estimates (a), (b), (c)) next to FP16 dense, INT8 dense
    and INT8 zero-skipping baselines, per layer and in total, in picojoules.

    ``layers``: LayerCounters, their ``to_dict()``s, any objects/dicts with the same
    fields, a ``{name: counters}`` mapping or a ``SimResult``. ``coding``: the spike coding
    (decides whether bitwise shifts are charged). ``profile``: a shipped name or a JSON
    path, prices the spiking side; ``baseline_profile`` prices the baselines and the
    non-spiking operations. ``nonspiking``: a dict from
    :func:`sbsnn.analysis.opcount.nonspiking_ops`, priced apart. ``block_bytes``: weight
    fetch granularity; ``weight_bits``: bits per stored INT8 weight (FP16 baseline: 16).
    ``weight_memory``: ``"dram"``, ``"hbm"`` or ``"sram"`` (weights on chip, Lemaire's
    setting). Formulas: the module docstring.
    """
    if coding not in CODINGS:
        raise ValueError(f"unknown coding {coding!r}; choose one of {', '.join(CODINGS)}")
    if weight_memory not in ("dram", "hbm", "sram"):
        raise ValueError(f"weight_memory must be 'dram', 'hbm' or 'sram', got {weight_memory!r}")
    if not isinstance(block_bytes, int) or block_bytes < 8 or block_bytes % 8:
        raise ValueError(f"block_bytes must be a positive multiple of 8 (DRAM is priced per "
                         f"64-bit access), got {block_bytes!r}")
    for nm, v in (("weight_bits", weight_bits), ("group_size", group_size), ("acc_bits", acc_bits),
                  ("input_bits", input_bits), ("output_bits", output_bits)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm} must be a positive integer, got {v!r}")
    if rescale_precision not in ("fp16", "fp32"):
        raise ValueError(f"rescale_precision must be 'fp16' or 'fp32', got {rescale_precision!r}")
    if nonspiking_precision not in ("fp16", "fp32"):
        raise ValueError(f"nonspiking_precision must be 'fp16' or 'fp32', got {nonspiking_precision!r}")
    if neuron_update not in ("active", "inactive"):
        raise ValueError(f"neuron_update must be 'active' or 'inactive', got {neuron_update!r}")
    sram_bits = dict(sram_bits or {})
    bad_keys = set(sram_bits) - {"weights", "potentials", "inputs", "outputs"}
    if bad_keys:
        raise ValueError(f"sram_bits keys must be weights, potentials, inputs, outputs; got {sorted(bad_keys)}")
    prof = load_profile(profile)
    base = load_profile(baseline_profile)
    o = _Opts(coding, block_bytes, weight_bits, weight_memory, acc_bits, input_bits, output_bits,
              rescale_precision, neuron_update, sram_bits)

    per_layer, notes = [], []
    for i, layer in enumerate(_as_layers(layers)):
        c = _layer_counts(layer, i, group_size)
        ests = {}
        for est in ESTIMATES:
            scen = {"snn": _snn(est, prof, c, o)}
            for b in BASELINES:
                scen[b] = _baseline(b, est, base, c, o)
            scen["comparison"] = _comparison(scen["snn"]["total_pj"], scen)
            ests[est] = scen
        ests["a_spikingbrain"]["pj_per_mac_equivalent"] = (
            _div(ests["a_spikingbrain"]["snn"]["total_pj"], c["dense_macs"])
            if ests["a_spikingbrain"]["snn"]["total_pj"] is not None else None)
        caps = {"spiking": _sram_sizes(c, o, weight_bits, input_bits),
                "fp16_dense": _sram_sizes(c, o, 16, 16)}
        entry = {"name": c["name"], "in_features": c["in_features"],
                 "out_features": c["out_features"], "counts": c, "estimates": ests,
                 "sram_capacity_bits": caps}
        over = sorted({f"{buf} ({bits / 8 / 2**20:.1f} MiB)" for side in caps.values()
                       for buf, bits in side.items() if bits > _SRAM_FIT_MAX_BITS})
        if over:
            notes.append(f"{c['name']}: Lemaire's SRAM fit is extrapolated beyond 1 MB for "
                         f"{', '.join(over)}; estimate (c) is a rough bound there"
                         + (" (weights: use weight_memory='dram' or 'hbm')"
                            if weight_memory == "sram" and any(x.startswith("weights") for x in over) else ""))
        per_layer.append(entry)

    totals: dict = {"estimates": {}}
    keys = ("tokens", "elements", "nonzero", "events_pos", "events_neg", "events", "synaptic_ops",
            "dense_macs", "channel_calls", "silent_channels", "active_channel_calls")
    totals["counts"] = {k: sum(L["counts"][k] for L in per_layer) for k in keys}
    tc = totals["counts"]
    tc["spikes_per_element"] = _div(tc["events"], tc["elements"]) or 0.0
    tc["silent_channel_fraction"] = _div(tc["silent_channels"], tc["channel_calls"]) or 0.0
    for est in ESTIMATES:
        scen = {s: _sum_scenarios([L["estimates"][est][s] for L in per_layer]) for s in SCENARIOS}
        scen["comparison"] = _comparison(scen["snn"]["total_pj"], scen)
        totals["estimates"][est] = scen
    a_tot = totals["estimates"]["a_spikingbrain"]["snn"]["total_pj"]
    totals["estimates"]["a_spikingbrain"]["pj_per_mac_equivalent"] = (
        _div(a_tot, tc["dense_macs"]) if a_tot is not None else None)

    ns = None
    if nonspiking is not None:
        ns = _price_nonspiking(nonspiking, base, nonspiking_precision)
        with_ns = {}
        for est in ESTIMATES:
            with_ns[est] = {s: (None if totals["estimates"][est][s]["total_pj"] is None or ns["total_pj"] is None
                                else totals["estimates"][est][s]["total_pj"] + ns["total_pj"])
                            for s in SCENARIOS}
        totals["with_nonspiking_pj"] = with_ns
    totals["nonspiking_pj"] = ns["total_pj"] if ns is not None else None

    if prof.kind != "arithmetic":
        notes.append(f"spiking side priced by {prof.name} ({prof.kind.replace('_', '-')}); "
                     f"baselines and non-spiking operations by {base.name}")
    unapplicable = sorted({f"{est}/{s}: missing {', '.join(t['missing']) or '-'}"
                           + (f" ({t['note']})" if t["note"] else "")
                           for est, sc in totals["estimates"].items()
                           for s, t in sc.items() if s in SCENARIOS and not t["applicable"]})
    notes.extend(f"not applicable: {u}" for u in unapplicable)
    if strict and unapplicable:
        raise ProfileError("estimates not applicable with these profiles: " + "; ".join(unapplicable))
    params = {"block_bytes": block_bytes, "weight_bits": weight_bits, "weight_memory": weight_memory,
              "group_size": group_size, "acc_bits": acc_bits, "input_bits": input_bits,
              "output_bits": output_bits, "rescale_precision": rescale_precision,
              "nonspiking_precision": nonspiking_precision, "neuron_update": neuron_update,
              "sram_bits": sram_bits}
    return EnergyReport(prof.name, base.name, coding, params, per_layer, totals, ns, notes,
                        {"spiking": prof.to_dict()["source"], "baseline": base.to_dict()["source"]})
