"""Task scores of a float and a spiking model side by side, through lm-evaluation-harness.

:func:`evaluate` runs lm-eval tasks (its own, by name, or local YAML tasks) on sbsnn
models through :class:`sbsnn.analysis.harness.SbsnnLM` with ``lm_eval.simple_evaluate``,
one task at a time, and returns an :class:`Evaluation`: per task each metric of both
models and the **recovery** (spiking / float for a metric where higher is better, float /
spiking where lower is better, so that recovery < 1 always means the spiking model lost
and 1 means it kept everything; llm-compressor passes a compressed model at >= 0.95), and
for the spiking side of the same run its spikes per element and energy per token (the
report's estimates). :meth:`Evaluation.markdown` is the short table; ``to_dict()`` the JSON.

Offline first: tasks are looked up among sbsnn's own (:data:`LOCAL_TASKS`: ``sbsnn_cloze``,
``sbsnn_heldout``) and the ``include_path`` folders before lm-eval's whole catalogue, and
with ``offline=True`` (the default) the Hugging Face libraries are held offline for the
call (their settings restored after it): a task whose data would need a download is
refused by name before any model runs, as is a task name that does not exist.
"""

from __future__ import annotations

import difflib
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sbsnn.analysis.cloze import EVAL_TASKS
from sbsnn.checks import check_int
from sbsnn.errors import (InputError, MissingPathError, OptionError, PathNotDirectoryError,
                          UnavailableError, brief)

__all__ = ["EXTRA_HINT", "Evaluation", "LOCAL_TASKS", "TaskSet", "TaskUnavailableError",
           "evaluate", "offline_hub", "parse_tasks", "recovery", "require_lm_eval",
           "resolve_tasks"]

LOCAL_TASKS = EVAL_TASKS
EXTRA_HINT = ("pip install -c constraints.txt 'sbsnn[eval]' (lm-eval; docs/evaluation.md has the "
              "exact commands)")


class TaskUnavailableError(UnavailableError):
    """A task whose data cannot be had here (a download while offline, a missing file)."""


def require_lm_eval():
    """The ``lm_eval`` module, or :class:`UnavailableError` naming the extra to install."""
    try:
        import lm_eval
    except ImportError as e:
        raise UnavailableError(f"task evaluation needs lm-eval ({e}); install it: "
                               f"{EXTRA_HINT}") from None
    return lm_eval


def parse_tasks(tasks) -> list[str]:
    """Task names from a list or a comma-separated string; empty names refused."""
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    if isinstance(tasks, (bytes, bytearray)) or not hasattr(tasks, "__iter__"):
        raise OptionError(f"tasks must be task names (a list or 'a,b'), got {brief(tasks)}")
    names = []
    for t in tasks:
        if not isinstance(t, str) or not t.strip():
            raise OptionError(f"tasks: {brief(t)} is not a task name (give names such as "
                              "sbsnn_cloze,arc_challenge)")
        names.append(t.strip())
    if not names:
        raise OptionError("tasks: give at least one task name (e.g. sbsnn_cloze)")
    return list(dict.fromkeys(names))


def _include_paths(include_path) -> list[Path]:
    if include_path is None:
        return []
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise MissingPathError(f"{p}: no such directory (--include-path names a folder of "
                                   "lm-eval task YAML files)", filename=p)
        if not p.is_dir():
            raise PathNotDirectoryError(f"{p}: --include-path names a folder of lm-eval task "
                                        "YAML files, not a file", filename=p)
        out.append(p)
    return out


_HUB_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"),
              ("datasets.config", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE"))
_HUB_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@contextmanager
def offline_hub(offline: bool = True):
    """While inside, the Hugging Face libraries make no network request (``offline``): their
    offline flags (read once at import, so set on the modules) and environment variables;
    everything is put back as it was on the way out."""
    if not offline:
        yield
        return
    import importlib

    saved_env = {k: os.environ.get(k) for k in _HUB_ENV}
    saved = []
    try:
        for k in _HUB_ENV:
            os.environ[k] = "1"
        for mod, attr in _HUB_FLAGS:
            try:
                m = importlib.import_module(mod)
            except ImportError:
                continue
            saved.append((m, attr, getattr(m, attr, None)))
            setattr(m, attr, True)
        yield
    finally:
        for m, attr, v in reversed(saved):
            setattr(m, attr, v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _task_manager(names: list[str], paths: list[Path]):
    """A TaskManager that knows every name: sbsnn's and the include paths' tasks first (a
    small index), lm-eval's whole catalogue only when a name is not among them; an unknown
    name is refused with the nearest known ones."""
    from lm_eval.tasks import TaskManager

    local = [str(LOCAL_TASKS)] + [str(p) for p in paths]
    tm = TaskManager(include_path=local, include_defaults=False)
    if any(n not in tm.all_tasks for n in names):
        tm = TaskManager(include_path=local)
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        n = unknown[0]
        near = difflib.get_close_matches(n, tm.all_tasks, n=3, cutoff=0.6)
        raise OptionError(f"task {n!r} does not exist in lm-eval {_lm_eval_version()} nor in "
                          f"{', '.join(local)}" + (f"; did you mean {', '.join(near)}?" if near else
                                                  "; list them with: lm-eval ls tasks"))
    return tm


def _lm_eval_version() -> str:
    import lm_eval

    return getattr(lm_eval, "__version__", "?")


_NETWORK_WORDS = ("offline", "couldn't reach", "could not reach", "connection", "network",
                  "internet", "hf_hub_offline")


def _needs_network(e: BaseException) -> bool:
    if isinstance(e, ConnectionError):
        return True
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in _NETWORK_WORDS)


def _load_task(tm, name: str) -> None:
    """Build task ``name`` once (its data read): ``TaskManager.load`` (lm-eval >= 0.4.10),
    else ``get_task_dict``."""
    if callable(getattr(tm, "load", None)):
        tm.load([name])
        return
    from lm_eval.tasks import get_task_dict

    get_task_dict([name], tm)


@dataclass(frozen=True)
class TaskSet:
    """Tasks looked up and loaded once (:func:`resolve_tasks`): their ``names``, the lm-eval
    ``manager`` that knows them, and whether they were found ``offline``."""

    names: tuple[str, ...]
    manager: object
    offline: bool


def resolve_tasks(tasks, include_path=None, offline: bool = True) -> TaskSet:
    """The :class:`TaskSet` of ``tasks`` after loading each once (inside
    :func:`offline_hub`): an unknown name, a task whose data needs a download while
    offline, and a task whose data cannot be read are refused naming the task, before any
    model runs."""
    require_lm_eval()
    if not isinstance(offline, bool):
        raise OptionError(f"offline must be True or False, got {brief(offline)}")
    names = parse_tasks(tasks)
    paths = _include_paths(include_path)
    with offline_hub(offline):
        tm = _task_manager(names, paths)
        for n in names:
            try:
                _load_task(tm, n)
            except Exception as e:  # noqa: BLE001 - any failure to load names the task
                why = " ".join(str(e).split())[:300] or type(e).__name__
                if offline and _needs_network(e):
                    raise TaskUnavailableError(
                        f"task {n!r} needs a download (its dataset is not in the local Hugging "
                        f"Face cache) and sbsnn eval runs offline: run it once with --download "
                        f"(network access), or give a local task (dataset_path: json) with "
                        f"--include-path ({type(e).__name__}: {why})") from None
                raise TaskUnavailableError(f"task {n!r} cannot be loaded: {type(e).__name__}: "
                                           f"{why}") from None
    return TaskSet(tuple(names), tm, offline)


def recovery(float_value, spiking_value, higher_is_better: bool | None) -> float | None:
    """spiking / float (higher is better) or float / spiking (lower is better): < 1 means
    the spiking model lost; None when a value is missing, not finite or zero."""
    try:
        f, s = float(float_value), float(spiking_value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(f) and math.isfinite(s)) or higher_is_better is None:
        return None
    num, den = (s, f) if higher_is_better else (f, s)
    return num / den if den else None


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: ``tasks`` (name -> items, metrics with both values
    and recovery, each side's usage: tokens, seconds, seconds per item, and for the spiking
    side spikes per element and energy per token) and the ``setup`` it ran with."""

    tasks: dict = field(default_factory=dict)
    setup: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"setup": dict(self.setup), "tasks": dict(self.tasks)}

    def markdown(self) -> str:
        """The short table: one row per task and metric."""
        sides = self.setup.get("sides", [])
        head = ["task", "metric"] + sides
        both = "float" in sides and "spiking" in sides
        if both:
            head.append("recovery")
        if "spiking" in sides:
            head += ["spikes/element", "energy pJ/token (a)"]
        head += [f"s/item {s}" for s in sides]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for task, t in self.tasks.items():
            for metric, m in t["metrics"].items():
                row = [task, metric] + [_fmt(m.get(s)) for s in sides]
                if both:
                    row.append(_fmt(m.get("recovery")))
                if "spiking" in sides:
                    sp = t["usage"]["spiking"]
                    row += [_fmt(sp.get("spikes_per_element")),
                            _fmt((sp.get("energy") or {}).get("pj_per_token"))]
                row += [_fmt(t["usage"][s].get("seconds_per_item")) for s in sides]
                lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _task_scores(results: dict, name: str) -> tuple[dict, dict, int]:
    """``(metric -> value, metric -> higher_is_better, items)`` of task (or group) ``name``
    from simple_evaluate's results (a group: its aggregate, over its subtasks' items)."""
    d = results["results"].get(name) or {}
    hib = (results.get("higher_is_better") or {}).get(name) or {}
    values, better = {}, {}
    for key, v in d.items():
        if key in ("alias", "sample_len") or "_stderr" in key or isinstance(v, bool) \
                or not isinstance(v, (int, float)):
            continue
        metric = key.split(",")[0]
        values[metric] = float(v)
        better[metric] = hib.get(metric)
    n = results.get("n-samples") or {}
    groups = results.get("group_subtasks") or {}
    members, todo = set(), [name]
    while todo:                                   # a group's subtasks, subgroups expanded
        t = todo.pop()
        members.add(t)
        todo += [c for c in groups.get(t) or [] if c not in members]
    items = sum(int(v.get("effective", 0)) for k, v in n.items() if k in members)
    return values, better, items


def evaluate(model, tasks, *, spiking=None, include_path=None, limit: int | None = None,
             offline: bool = True, block_size: int = 256, max_length: int | None = None,
             profile: str = "horowitz45", num_fewshot: int | None = None,
             bootstrap_iters: int = 0, progress: bool = False, on_task=None) -> Evaluation:
    """Run lm-eval ``tasks`` on ``model`` (float, or a spiking model alone) and, given
    ``spiking``, on that spiking model too; see the module docstring.

    ``tasks``: names (a list or ``"a,b"``), or a :class:`TaskSet` already looked up
    (``include_path`` and ``offline`` are then its own); ``include_path``: folders of local
    task YAML files (one or a list); ``limit``: at most that many items per task (an int >= 1);
    ``offline``: no download (default); ``block_size`` / ``max_length``: as
    :class:`~sbsnn.analysis.harness.SbsnnLM`; ``profile``: energy profile of the spiking side;
    ``bootstrap_iters``: lm-eval's bootstrap for standard errors (0: none, the fastest);
    ``on_task(name, entry)`` is called as each task finishes."""
    check_int(limit, "limit", minimum=1, none_ok=True, hint=" (leave it out for every item)")
    check_int(num_fewshot, "num_fewshot", minimum=0, none_ok=True)
    check_int(bootstrap_iters, "bootstrap_iters", minimum=0)
    require_lm_eval()
    from lm_eval import simple_evaluate

    from sbsnn.analysis.harness import SbsnnLM

    ts = tasks if isinstance(tasks, TaskSet) else resolve_tasks(tasks, include_path, offline)
    names, tm, offline = list(ts.names), ts.manager, ts.offline
    opts = dict(block_size=block_size, max_length=max_length, profile=profile, progress=progress)
    first = SbsnnLM(model, **opts)
    lms = {"spiking" if first.spiking else "float": first}
    if spiking is not None:
        if first.spiking:
            raise OptionError("evaluate: the first model is already spiking; give the float "
                              "model first and the spiking one as spiking=")
        second = SbsnnLM(spiking, **opts)
        if not second.spiking:
            raise OptionError("evaluate: spiking= is a float model (no spiking layer); convert "
                              "it first (sbsnn convert)")
        lms["spiking"] = second
    out = Evaluation(setup={"sides": list(lms), "tasks": names, "limit": limit,
                            "offline": offline, "block_size": block_size,
                            "max_length": first.max_length, "num_fewshot": num_fewshot,
                            "profile": profile, "lm_eval_version": _lm_eval_version()})
    for name in names:
        entry = {"metrics": {}, "usage": {}, "items": None}
        scores = {}
        for side, lm in lms.items():
            lm.reset_usage()
            t0 = time.perf_counter()
            with offline_hub(offline):
                res = simple_evaluate(model=lm, tasks=[name], task_manager=tm, limit=limit,
                                      num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters,
                                      log_samples=False, random_seed=None, numpy_random_seed=None,
                                      torch_random_seed=None)
            seconds = time.perf_counter() - t0
            values, better, items = _task_scores(res, name)
            if not values:
                raise InputError(f"task {name!r} gave no numeric metric (lm-eval results: "
                                 f"{brief(res.get('results'), 200)})")
            scores[side] = (values, better)
            entry["items"] = items
            u = lm.usage()
            u.update(seconds=seconds, seconds_per_item=seconds / items if items else None)
            entry["usage"][side] = u
        for metric in next(iter(scores.values()))[0]:
            m = {"higher_is_better": next(iter(scores.values()))[1].get(metric)}
            for side, (values, _) in scores.items():
                m[side] = values.get(metric)
            if len(scores) == 2:
                m["recovery"] = recovery(m["float"], m["spiking"], m["higher_is_better"])
            entry["metrics"][metric] = m
        out.tasks[name] = entry
        if on_task is not None:
            on_task(name, entry)
    return out
