"""sbsnn: spiking conversion, event-driven simulation and reports for hybrid LLMs."""

__version__ = "0.1.0"


def load_model(name_or_dir, device="cpu", dtype=None, allow_pickle=False):
    """Load a float model by embedded name (``"tiny-hybrid"``) or checkpoint directory."""
    from sbsnn.models import load_model as _load

    return _load(name_or_dir, device=device, dtype=dtype, allow_pickle=allow_pickle)


__all__ = ["__version__", "load_model"]
