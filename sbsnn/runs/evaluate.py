"""``sbsnn eval``: lm-evaluation-harness tasks on checkpoints, float and spiking side by side.

:func:`evaluate_checkpoints` loads a model (a float checkpoint, a GGUF file, an embedded
name, or a spiking checkpoint alone) and optionally a spiking checkpoint, runs
:func:`sbsnn.analysis.evaluation.evaluate` and writes ``results.json`` (every number) and
``results.md`` (the short table) into ``out`` atomically (``results.json`` last).

The adapter loaded from a path, as lm-eval's ``--model sbsnn --model_args
pretrained=PATH`` builds it, is :mod:`sbsnn.runs.lm_eval_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

from sbsnn import __version__
from sbsnn.analysis.evaluation import Evaluation, evaluate, require_lm_eval
from sbsnn.converters.format import SPIKING_CONFIG, load_spiking
from sbsnn.errors import CheckpointKindError
from sbsnn.fsutil import jsonable, write_atomically
from sbsnn.models.checkpoint import load_model

__all__ = ["RESULTS_JSON", "RESULTS_MD", "evaluate_checkpoints", "load_any", "write_results"]

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


def load_any(path, *, allow_pickle: bool = False, verify: bool = True):
    """A spiking checkpoint (a directory with ``spiking_config.json``) or a float model
    (anything :func:`sbsnn.load_model` reads); a path that is neither is refused by name."""
    p = Path(str(path))
    if p.is_dir() and (p / SPIKING_CONFIG).exists():
        return load_spiking(p, verify=verify)
    return load_model(path, allow_pickle=allow_pickle)


def write_results(ev: Evaluation, out_dir, metadata: dict | None = None) -> list[Path]:
    """``results.json`` and ``results.md`` of ``ev`` into ``out_dir``, atomically."""
    doc = jsonable({"format": "sbsnn-eval", "format_version": 1, "sbsnn_version": __version__,
                    **(metadata or {}), **ev.to_dict()})

    def write(tmp: Path) -> list[str]:
        (tmp / RESULTS_MD).write_text(ev.markdown(), encoding="utf-8")
        (tmp / RESULTS_JSON).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n",
                                        encoding="utf-8")
        return [RESULTS_MD, RESULTS_JSON]

    return write_atomically(out_dir, write, final=RESULTS_JSON, remove_first=(RESULTS_JSON,))


def evaluate_checkpoints(model, tasks, *, spiking=None, include_path=None, limit=None,
                         out=None, offline: bool = True, block_size: int = 256,
                         max_length: int | None = None, profile: str = "horowitz45",
                         num_fewshot: int | None = None, allow_pickle: bool = False,
                         verify: bool = True, progress: bool = False,
                         on_task=None) -> tuple[Evaluation, list[Path]]:
    """Load ``model`` (and ``spiking``), evaluate them on ``tasks`` (see
    :func:`sbsnn.analysis.evaluation.evaluate`, which checks every option and every task
    before the models load) and write the results into ``out`` (None: nothing written).
    Returns the :class:`~sbsnn.analysis.evaluation.Evaluation` and the files written."""
    from sbsnn.analysis.evaluation import resolve_tasks
    from sbsnn.checks import check_int

    check_int(limit, "--limit", minimum=1, none_ok=True, hint=" (leave it out for every item)")
    require_lm_eval()
    task_set = resolve_tasks(tasks, include_path, offline)   # refused by name before loading
    float_model = load_any(model, allow_pickle=allow_pickle, verify=verify)
    spiking_model = None
    if spiking is not None:
        spiking_model = load_any(spiking, allow_pickle=allow_pickle, verify=verify)
        if getattr(float_model, "spiking_config", None) is not None:
            raise CheckpointKindError(f"{model}: a spiking checkpoint; with --spiking the first "
                                      "MODEL must be the float model it was converted from")
        if getattr(spiking_model, "spiking_config", None) is None:
            raise CheckpointKindError(f"{spiking}: not a spiking checkpoint (no {SPIKING_CONFIG}); "
                                      "--spiking takes the output of sbsnn convert")
    ev = evaluate(float_model, task_set, spiking=spiking_model, limit=limit,
                  block_size=block_size, max_length=max_length,
                  profile=profile, num_fewshot=num_fewshot, progress=progress, on_task=on_task)
    files = []
    if out is not None:
        files = write_results(ev, out, {"model": str(model),
                                        "spiking": None if spiking is None else str(spiking)})
    return ev, files
