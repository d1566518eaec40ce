"""The spiking checkpoint: a directory anyone can read without sbsnn.

::

    config.json            the float model's config, unchanged
    spiking_config.json    format, format_version, sbsnn_version, preset, coding, k,
                           group_size, targets, attention_hooks, quantization statistics
    model.safetensors      (or shards + model.safetensors.index.json)
        <layer>.weight_codes   int8  [out, in]   for each target
        <layer>.weight_scales  float32 [out, ceil(in / group_size)]
        <layer>.bias           as in the float model
        everything else        the float model's tensors under their own names

Described in ``docs/spiking-checkpoint.md``. Written into a temporary directory and
renamed at the end, so a killed save never leaves a complete-looking output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from sbsnn.converters.convert import FORMAT_VERSION, SpikingConfig, _check_options, apply_structure
from sbsnn.models.checkpoint import default_dtype, fill_state, read_state_dict, save_pretrained
from sbsnn.models.config import HybridConfig
from sbsnn.models.errors import CheckpointError
from sbsnn.models.hybrid import HybridForCausalLM
from sbsnn.models.tokenizer import tokenizer_for

SPIKING_CONFIG = "spiking_config.json"


class atomic_directory:
    """``with atomic_directory(out, force) as tmp:`` write into ``tmp``; on success it
    becomes ``out`` (replacing it only with ``force``); on failure it is removed."""

    def __init__(self, out: str | Path, force: bool = False):
        self.out, self.force = Path(out), force

    def __enter__(self) -> Path:
        if self.out.exists() and not self.force:
            raise FileExistsError(f"{self.out} already exists; pass force=True (--force) to replace it")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_spiking_config(directory: Path, cfg: SpikingConfig) -> None:
    (directory / SPIKING_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def read_spiking_config(directory: str | Path) -> SpikingConfig:
    path = Path(directory) / SPIKING_CONFIG
    if not path.exists():
        raise CheckpointError(f"{path}: missing; {directory} is not a spiking checkpoint "
                              "(make one with sbsnn convert)")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != "sbsnn-spiking":
        raise CheckpointError(f"{path}: not an sbsnn spiking config (format field missing)")
    version = d.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is newer than this sbsnn "
                              f"reads ({FORMAT_VERSION}); upgrade sbsnn")
    names = set(SpikingConfig.__dataclass_fields__)
    try:
        cfg = SpikingConfig(**{k: v for k, v in d.items() if k in names})
        _check_options(cfg.coding, cfg.k, cfg.group_size)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not isinstance(cfg.targets, list) or not all(isinstance(t, str) for t in cfg.targets):
        raise CheckpointError(f"{path}: 'targets' must be a list of module names")
    if not isinstance(cfg.layer_k, dict) or set(cfg.layer_k) - set(cfg.targets):
        raise CheckpointError(f"{path}: 'layer_k' must map spiking layers (of 'targets') to k")
    for name, v in cfg.layer_k.items():
        try:
            _check_options(cfg.coding, v, cfg.group_size)
        except ValueError as e:
            raise CheckpointError(f"{path}: layer_k[{name!r}]: {e}") from None
    if cfg.calibration is not None and not isinstance(cfg.calibration, dict):
        raise CheckpointError(f"{path}: 'calibration' must be an object or null")
    return cfg


def save_spiking(model: HybridForCausalLM, directory: str | Path, force: bool = False,
                 max_shard_bytes: int | None = None,
                 extra_files: Mapping[str, str] | None = None) -> Path:
    """Write a converted model (from :func:`sbsnn.convert`) as a spiking checkpoint.

    ``extra_files``: file name -> text, written into the same directory before it appears
    (``sbsnn convert --calibrate`` puts ``calibration.json`` there)."""
    cfg = getattr(model, "spiking_config", None)
    if not isinstance(cfg, SpikingConfig):
        raise ValueError("save_spiking needs a model returned by sbsnn.convert")
    with atomic_directory(directory, force) as tmp:
        save_pretrained(model, tmp, max_shard_bytes=max_shard_bytes)
        write_spiking_config(tmp, cfg)
        tok = getattr(model, "tokenizer", None)
        if hasattr(tok, "to_json"):  # a Hugging Face tokenizer travels with the weights
            (tmp / "tokenizer.json").write_text(tok.to_json())
        for name, text in (extra_files or {}).items():
            if Path(name).name != name or name in (SPIKING_CONFIG, "config.json"):
                raise ValueError(f"extra file {name!r}: give a plain file name that is not "
                                 "one of the checkpoint's own files")
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(directory)


def load_spiking(directory: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> HybridForCausalLM:
    """Rebuild a spiking model saved by :func:`save_spiking` or ``sbsnn convert``.

    ``dtype`` applies to the floating tensors (INT8 codes stay INT8); by default as
    :func:`sbsnn.models.load_model` does (float16 computes in float32 on a CPU)."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory (a spiking checkpoint is a directory)")
    scfg = read_spiking_config(d)
    cfg = HybridConfig.from_json(d / "config.json")
    raw, origin = read_state_dict(d)
    with torch.device("meta"):
        model = HybridForCausalLM(cfg)
        try:
            apply_structure(model, scfg)
        except AttributeError as e:
            raise CheckpointError(f"{d / SPIKING_CONFIG}: names a module this config.json does "
                                  f"not have ({e})") from None
    fill_state(model, raw, origin, d, cfg.model_type, device=device,
               dtype=default_dtype(raw, device) if dtype is None else dtype)
    model.eval()
    model.tokenizer = tokenizer_for(d, cfg.vocab_size)
    return model
