"""``lm_eval --model sbsnn``: the adapter built from a path, and its registration.

:class:`SbsnnEvalLM` is :class:`sbsnn.analysis.harness.SbsnnLM` loaded from
``--model_args pretrained=PATH,...`` (a float checkpoint, a GGUF file, an embedded name
or a spiking checkpoint). :func:`register_lm_eval` puts it in lm-eval's model registry as
``sbsnn``; importing this module registers it (lm-eval's ``@register_model`` pattern), so
``import sbsnn.runs.lm_eval_model`` before ``lm_eval.simple_evaluate(model="sbsnn", ...)``
is all a script needs. Released lm-eval (0.4.x, up to 0.4.13) finds no model outside its
own source tree on its command line, so the ``sbsnn-lm-eval`` command is lm-eval's own
command line with ``sbsnn`` registered (:func:`main`; ``docs/evaluation.md``).

Importing this module needs lm-eval (the ``eval`` extra).
"""

from __future__ import annotations

import logging

from lm_eval.api.registry import get_model, register_model

from sbsnn.analysis.harness import SbsnnLM
from sbsnn.errors import OptionError
from sbsnn.runs.evaluate import load_any

__all__ = ["SbsnnEvalLM", "main", "register_lm_eval"]

_MODEL_ARGS = ("pretrained", "block_size", "max_length", "max_gen_toks", "profile",
               "allow_pickle", "verify")


class SbsnnEvalLM(SbsnnLM):
    """lm-eval's ``--model sbsnn``: ``pretrained`` a float model or a spiking checkpoint;
    ``block_size``, ``max_length``, ``max_gen_toks``, ``profile`` as
    :class:`~sbsnn.analysis.harness.SbsnnLM`; ``allow_pickle`` and ``verify`` as loading.
    lm-eval's ``batch_size`` must be 1 (``auto`` means 1): sbsnn scores one sequence at a
    time; ``device``: where the model runs (default the CPU; a CUDA device where none is
    usable, lm-eval's command line default, means the CPU, as for lm-eval's ``hf`` model)."""

    def __init__(self, pretrained=None, block_size: int = 256, max_length: int | None = None,
                 max_gen_toks: int = 256, profile: str = "horowitz45", allow_pickle: bool = False,
                 verify: bool = True, batch_size=None, max_batch_size=None, device=None,
                 **unknown):
        if unknown:
            raise OptionError(f"--model_args {', '.join(sorted(unknown))}: not understood by "
                              f"sbsnn (it takes {', '.join(_MODEL_ARGS)})")
        if pretrained is None:
            raise OptionError("--model_args pretrained=PATH is required (a float checkpoint, a "
                              ".gguf file, tiny-hybrid, or a spiking checkpoint)")
        if batch_size not in (None, 1, "1", "auto"):
            raise OptionError(f"--batch_size {batch_size}: sbsnn scores one sequence at a time; "
                              "give 1 (or leave it out)")
        model = load_any(pretrained, allow_pickle=allow_pickle, verify=verify)
        model = model.to(_device(device))
        super().__init__(model, block_size=block_size, max_length=max_length,
                         max_gen_toks=max_gen_toks, profile=profile)


def _device(device):
    """Where to run: ``device``, except a CUDA device where none is usable (lm-eval's command
    line asks for ``cuda:0`` by default): the CPU then, as lm-eval's ``hf`` model does, said
    in lm-eval's log."""
    import torch

    d = torch.device(device or "cpu")
    if d.type == "cuda" and not torch.cuda.is_available():
        logging.getLogger("lm-eval").warning("sbsnn: device %r asked for but no CUDA device is "
                                             "usable; running on the CPU", device)
        return torch.device("cpu")
    return d


def register_lm_eval() -> None:
    """Register :class:`SbsnnEvalLM` in lm-eval's model registry as ``sbsnn`` (again: no-op)."""
    try:
        if get_model("sbsnn") is SbsnnEvalLM:
            return
    except (ValueError, KeyError):
        pass
    register_model("sbsnn")(SbsnnEvalLM)


register_lm_eval()


def main() -> None:
    """The ``sbsnn-lm-eval`` command: lm-eval's own command line, ``--model sbsnn`` known."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
