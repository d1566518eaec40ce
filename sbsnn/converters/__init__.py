"""Float model -> spiking model: INT8 weights, spiked inputs, presets, checkpoint format."""

from sbsnn.converters.convert import SpikingConfig, apply_structure, convert
from sbsnn.converters.format import load_spiking, read_spiking_config, save_spiking
from sbsnn.converters.kv_quant import Int8PerTokenHead
from sbsnn.converters.presets import PRESETS, linear_targets
from sbsnn.converters.quant import QuantStats, dequantize_weight, quantize_weight
from sbsnn.converters.spiking_linear import ExecutorSwap, SpikingLinear, spiking_layers
from sbsnn.converters.stream import convert_checkpoint

__all__ = [
    "PRESETS", "ExecutorSwap", "Int8PerTokenHead", "QuantStats", "SpikingConfig", "SpikingLinear",
    "apply_structure", "convert", "convert_checkpoint", "dequantize_weight", "linear_targets",
    "load_spiking", "quantize_weight", "read_spiking_config", "save_spiking", "spiking_layers",
]
