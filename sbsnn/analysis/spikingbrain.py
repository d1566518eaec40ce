"""SpikingBrain's published figures, each written once, and its energy formula (Eq. 24).

Every number here is quoted from the SpikingBrain technical report (arXiv 2509.05276), for
the 7B model, with the section, figure or table it stands in. The sparsity metrics, energy
estimates, plots, reports and sweeps that set a run beside the paper import them from here.
"""

from __future__ import annotations

import math
from pathlib import Path

from sbsnn.analysis.energy_profiles import EnergyProfile, load_profile

__all__ = ["SPIKINGBRAIN_7B_ABS_COUNT_LE_7", "SPIKINGBRAIN_7B_EQ24", "SPIKINGBRAIN_7B_FIG9",
           "SPIKINGBRAIN_7B_POINT", "SPIKINGBRAIN_7B_SILENT_CHANNELS", "SPIKINGBRAIN_7B_SPARSITY",
           "SPIKINGBRAIN_7B_SPIKES", "SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT", "SPIKINGBRAIN_7B_SWEEP",
           "spikingbrain_energy_per_mac"]

REPORT = "SpikingBrain report (arXiv 2509.05276)"

# ---- section 5.5, Fig. 9: 7B, sign-magnitude bitwise coding, pooled over all projection inputs
# Fig. 9's bars, elements by spikes emitted. The 0-spike bar is the report's "69.15 %
# sparsity" ("within a 3-step window").
SPIKINGBRAIN_7B_SPIKES = {"0": 0.6915, "1": 0.1930, "2": 0.0969, ">=3": 0.0185}
SPIKINGBRAIN_7B_SPARSITY = SPIKINGBRAIN_7B_SPIKES["0"]
SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT = 1.13     # "1.13 spikes per channel"
SPIKINGBRAIN_7B_SILENT_CHANNELS = 0.184       # channels that fire no spike
SPIKINGBRAIN_7B_ABS_COUNT_LE_7 = 0.941        # elements with abs(count) <= 7
SPIKINGBRAIN_7B_FIG9 = {
    "source": f"{REPORT}, section 5.5, Fig. 9: 7B model, sign-magnitude bitwise coding, pooled "
              "over all projection inputs",
    "sparsity_3_step_window": SPIKINGBRAIN_7B_SPARSITY,
    "spikes_per_element": SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT,
    "silent_channel_fraction": SPIKINGBRAIN_7B_SILENT_CHANNELS,
    "abs_count_le_7": SPIKINGBRAIN_7B_ABS_COUNT_LE_7,
    "spikes_histogram": SPIKINGBRAIN_7B_SPIKES,
}

# ---- Appendix A.8, Table 11 (k sweep, 7B): sparsity and average benchmark score; bf16 (no
# spiking) average score 0.6998 (also Table 3: 0.6998 -> 0.6875 after spiking, at k = 3).
SPIKINGBRAIN_7B_SWEEP = {
    "source": f"{REPORT}, Appendix A.8, Table 11 (7B)",
    "k": [2.0, 2.5, 3.0, 3.5, 4.0],
    "sparsity": [0.730, 0.709, 0.692, 0.677, 0.664],
    "avg_score": [0.6735, 0.6807, 0.6875, 0.6898, 0.6940],
    "bf16_avg_score": 0.6998,
}

# ---- the 7B at k = 3, bitwise coding: spikes per element (Fig. 9) and bf16 / spiking average
# benchmark score (Table 11)
SPIKINGBRAIN_7B_POINT = {
    "source": f"{REPORT}, section 5.5 and Table 11 (7B)",
    "coding": "bitwise", "k": 3.0, "spikes_per_element": SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT,
    "score_ratio": SPIKINGBRAIN_7B_SWEEP["bf16_avg_score"]
                   / SPIKINGBRAIN_7B_SWEEP["avg_score"][SPIKINGBRAIN_7B_SWEEP["k"].index(3.0)],
}

# ---- section 5.5, Eq. 24, as printed: 1.13 spikes x 0.03 pJ (INT8 add) per MAC-equivalent,
# reductions against an FP16 and an INT8 MAC, and the "x" factors 1 / (1 - printed reduction)
SPIKINGBRAIN_7B_EQ24 = {
    "source": f"{REPORT}, section 5.5, Eq. 24 (7B)",
    "spikes_per_element": SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT,
    "pj_per_mac_equivalent": 0.0339,
    "reduction_vs_fp16_pct": 97.7, "reduction_vs_int8_pct": 85.2,
    "ratio_vs_fp16": 43.48, "ratio_vs_int8": 6.76,
}


def _truncate(x: float, decimals: int) -> float:
    f = 10 ** decimals
    return math.floor(x * f + 1e-9) / f


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def spikingbrain_energy_per_mac(spikes_per_element: float,
                                profile: "str | Path | EnergyProfile" = "horowitz45") -> dict:
    """SpikingBrain's Eq. 24: energy per MAC-equivalent = mean spikes per element x E_INT8_add.

    A MAC-equivalent is one dense MAC, i.e. one (input element x output) pair: a layer's
    spiking energy ``events * fan_out * E_add`` divided by its dense MACs
    ``elements * fan_out`` is ``spikes_per_element * E_add``.

    Returns the energy, the exact reductions against the FP16 and INT8 MACs and the direct
    ratios (MAC / energy), plus the report's printed forms: percentages truncated to 0.1 %
    (97.74 % -> 97.7 %, 85.26 % -> 85.2 %, as printed) and the report's "x" factors, which
    are 1 / (1 - printed reduction) (43.48x and 6.76x), not the direct ratios (44.2x, 6.8x).
    """
    if spikes_per_element < 0:
        raise ValueError(f"spikes_per_element must be >= 0, got {spikes_per_element}")
    prof = load_profile(profile)
    e_add, fp16, int8 = (prof.value(k) for k in ("int8_add", "fp16_mac", "int8_mac"))
    e = spikes_per_element * e_add
    out = {"spikes_per_element": spikes_per_element, "e_add_pj": e_add, "fp16_mac_pj": fp16,
           "int8_mac_pj": int8, "pj_per_mac_equivalent": e, "profile": prof.name}
    for name, mac in (("fp16", fp16), ("int8", int8)):
        red = 1 - e / mac
        printed = _truncate(100 * red, 1)
        out[f"reduction_vs_{name}"] = red
        out[f"ratio_vs_{name}"] = _div(mac, e)
        out[f"reduction_vs_{name}_pct_printed"] = printed
        out[f"ratio_vs_{name}_printed"] = _div(1.0, 1 - printed / 100)
    return out
