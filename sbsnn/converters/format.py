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
    prefix_state.safetensors  (with a constant prefix, format_version 3) the decoding state
                           after the prefix, computed in float: ``layers.{i}.<cache>``
                           tensors (attention caches compacted to their filled slots) and
                           ``logits``; its ids, size and cost under ``prefix`` in
                           spiking_config.json

Described in ``docs/spiking-checkpoint.md``. Written into a temporary directory and
renamed at the end, so a killed save never leaves a complete-looking output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping

import torch

from sbsnn import fsutil
from sbsnn.checks import check_input_file, check_int, read_json_file
from sbsnn.converters.convert import FORMAT_VERSION, SpikingConfig, _check_options, apply_structure
from sbsnn.converters.presets import PRESETS
from sbsnn.converters.quant import CODE_MAX, num_groups
from sbsnn.converters.spiking_linear import SpikingLinear
from sbsnn.errors import (CheckpointKindError, IntegrityError, NonFiniteError, OptionError,
                          PathExistsError, SbsnnError, os_error)
from sbsnn.models.checkpoint import (EMBEDDED, TOKENIZER_FILES, check_device_dtype,
                                     default_dtype, fill_state, read_safetensors,
                                     read_state_dict, save_pretrained, write_safetensors)
from sbsnn.models.config import HybridConfig
from sbsnn.models.errors import CheckpointError
from sbsnn.models.hybrid import HybridForCausalLM
from sbsnn.models.prefix import PREFIX_FILE, ConstantPrefix, prefix_of
from sbsnn.models.tokenizer import tokenizer_or_none

SPIKING_CONFIG = "spiking_config.json"


class atomic_directory(fsutil.atomic_directory):
    """``with atomic_directory(out, force) as tmp:`` write into ``tmp``; on success it
    becomes ``out`` (replacing it only with ``force``); on failure it is removed
    (:class:`sbsnn.fsutil.atomic_directory`, which also cleans up what a killed run left).

    ``force`` replaces only a spiking checkpoint or an empty directory, never a file, a
    float checkpoint or a directory of other things (:func:`check_output_dir`).
    """

    def __init__(self, out: str | Path, force: bool = False):
        super().__init__(out, check=lambda p: check_output_dir(p, force))
        self.force = force


def check_output_dir(out: str | Path, force: bool) -> None:
    """Refuse an output that exists (without ``force``), or that ``force`` must not
    replace: a file, or a directory that is not a spiking checkpoint (nor empty)."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise PathExistsError(f"{out} already exists; pass force=True (--force) to replace it",
                              filename=out)
    if out.is_symlink() or not out.is_dir():
        raise OptionError(f"{out} exists and is not a directory; --force (force=True) "
                          "replaces a spiking checkpoint directory only: remove it yourself or "
                          "choose another output")
    try:
        entries = [p.name for p in out.iterdir()]
    except OSError as e:
        raise os_error(e, out, "checking the output before replacing it") from None
    if not entries:
        return
    refuse = ("--force (force=True) replaces only a spiking checkpoint sbsnn wrote, exactly as "
              "it wrote it: remove it yourself or choose another output")
    if SPIKING_CONFIG not in entries:
        raise OptionError(f"{out} exists and is not a spiking checkpoint (it holds "
                          f"{', '.join(sorted(entries)[:4])}{', ...' if len(entries) > 4 else ''}); "
                          + refuse)
    try:
        scfg = read_spiking_config(out)
    except SbsnnError as e:
        raise OptionError(f"{out}: its {SPIKING_CONFIG} is not one sbsnn wrote ({e}); " + refuse) from None
    if not scfg.digests:
        raise OptionError(f"{out}: a spiking checkpoint without the list of the files sbsnn wrote "
                          f"(its {SPIKING_CONFIG} has no digests: written by an earlier sbsnn "
                          "that did not record them, or by hand), so sbsnn cannot tell its files "
                          "from others; " + refuse)
    # Everything in the directory must be a file sbsnn wrote, with the content it wrote:
    # the digests are its manifest (every file but spiking_config.json itself).
    foreign = sorted(n for n in entries
                     if n != SPIKING_CONFIG and (n not in scfg.digests or not (out / n).is_file()
                                                 or (out / n).is_symlink()))
    if foreign:
        raise OptionError(f"{out} holds files sbsnn did not write ({', '.join(foreign[:4])}"
                          f"{', ...' if len(foreign) > 4 else ''}); " + refuse)
    try:
        verify_digests(out, scfg)
    except IntegrityError as e:
        raise OptionError(f"{out}: changed since sbsnn wrote it ({e}); " + refuse) from None


# ----------------------------------------------------------------------------- digests
DIGEST = "sha256"


def file_digest(path: Path) -> str:
    check_input_file(path, "a checkpoint file", error=IntegrityError)
    with open(path, "rb") as f:
        return f"{DIGEST}:{hashlib.file_digest(f, DIGEST).hexdigest()}"


def _digested_files(directory: Path) -> list[Path]:
    """The files of a checkpoint directory its digests cover: all but spiking_config.json
    and hidden files."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.name != SPIKING_CONFIG and not p.name.startswith("."))


def _read_by_loader(name: str) -> bool:
    """Files load_spiking reads (a report written into the directory is not one)."""
    return (name.endswith(".safetensors") or name in TOKENIZER_FILES
            or name in ("config.json", "model.safetensors.index.json"))


def verify_digests(directory: str | Path, cfg: SpikingConfig, files=None) -> bool:
    """Check every file (or only those named in ``files``) against ``cfg.digests`` (and
    that no file the loader reads is left out of them). False when the checkpoint has no
    digests (written before sbsnn recorded them); raises :class:`IntegrityError` naming
    the file otherwise."""
    d = Path(directory)
    if not cfg.digests:
        return False
    chosen = None if files is None else {Path(f).name for f in files}
    if chosen is not None:
        missing = sorted(chosen - set(cfg.digests))
        if missing:
            raise IntegrityError(f"{d / missing[0]}: not covered by {SPIKING_CONFIG}'s digests "
                                 "(added after conversion?); convert the checkpoint again")
    for name, want in sorted(cfg.digests.items()):
        if chosen is not None and name not in chosen:
            continue
        p = d / name
        if not p.is_file():
            raise IntegrityError(f"{p}: listed in {SPIKING_CONFIG}'s digests but missing; the "
                                 "checkpoint is incomplete: convert it again")
        try:
            got = file_digest(p)
        except OSError as e:
            raise os_error(e, p, "verifying the checkpoint") from None
        if got != want:
            raise IntegrityError(f"{p}: content digest mismatch ({got[:19]}..., "
                                 f"{SPIKING_CONFIG} records {want[:19]}...): the file changed "
                                 "after conversion (a flipped byte, a partial copy, an edit); "
                                 "convert it again or restore the file")
    extra = [p.name for p in _digested_files(d) if p.name not in cfg.digests and _read_by_loader(p.name)]
    if extra:
        raise IntegrityError(f"{d / extra[0]}: not covered by {SPIKING_CONFIG}'s digests (added "
                             "after conversion?); remove it or convert the checkpoint again")
    return True


def write_spiking_config(directory: Path, cfg: SpikingConfig) -> None:
    """Write spiking_config.json, with the digest of every other file of ``directory``
    (so call it last)."""
    directory = Path(directory)
    d = cfg.to_dict()
    d["digests"] = {p.name: file_digest(p) for p in _digested_files(directory)}
    (directory / SPIKING_CONFIG).write_text(json.dumps(d, indent=2) + "\n")


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(t, str) for t in v)


def read_spiking_config(directory: str | Path) -> SpikingConfig:
    d = Path(directory)
    path = d / SPIKING_CONFIG
    if not path.exists():
        if (d / "config.json").exists():
            raise CheckpointKindError(
                f"{d}: is a float checkpoint (config.json, no {SPIKING_CONFIG}), but a spiking "
                "checkpoint is expected here; make one with sbsnn convert SRC OUT (or "
                "sbsnn.convert / save_spiking), or load this one with sbsnn.load_model")
        raise CheckpointError(f"{path}: missing; {directory} is not a spiking checkpoint "
                              "(make one with sbsnn convert)")
    d_ = read_json_file(path, SPIKING_CONFIG, error=CheckpointError)
    if not isinstance(d_, dict) or d_.get("format") != "sbsnn-spiking":
        raise CheckpointError(f"{path}: not an sbsnn spiking config (format field missing)")
    version = d_.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is newer than this sbsnn "
                              f"reads ({FORMAT_VERSION}); upgrade sbsnn")
    names = set(SpikingConfig.__dataclass_fields__)
    # Unknown keys are ignored (docs/spiking-checkpoint.md: optional keys do not bump
    # the version); those sbsnn knows are checked one by one.
    try:
        cfg = SpikingConfig(**{k: v for k, v in d_.items() if k in names})
        _check_options(cfg.coding, cfg.k, cfg.group_size)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not _str_list(cfg.targets) or not cfg.targets:
        raise CheckpointError(f"{path}: 'targets' must be a non-empty list of module names")
    if len(set(cfg.targets)) != len(cfg.targets):
        raise CheckpointError(f"{path}: 'targets' names a module twice")
    if not _str_list(cfg.attention_hooks):
        raise CheckpointError(f"{path}: 'attention_hooks' must be a list of module names")
    for key in ("patterns", "exclude"):
        if getattr(cfg, key) is not None and not _str_list(getattr(cfg, key)):
            raise CheckpointError(f"{path}: {key!r} must be a list of glob patterns or null")
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise CheckpointError(f"{path}: preset {cfg.preset!r} is not one of {PRESETS} (or null)")
    if not isinstance(cfg.quantization, dict):
        raise CheckpointError(f"{path}: 'quantization' must be an object")
    if not isinstance(cfg.layer_k, dict) or set(cfg.layer_k) - set(cfg.targets):
        raise CheckpointError(f"{path}: 'layer_k' must map spiking layers (of 'targets') to k")
    for name, v in cfg.layer_k.items():
        try:
            _check_options(cfg.coding, v, cfg.group_size)
        except ValueError as e:
            raise CheckpointError(f"{path}: layer_k[{name!r}]: {e}") from None
    for key in ("calibration", "finetune"):
        if getattr(cfg, key) is not None and not isinstance(getattr(cfg, key), dict):
            raise CheckpointError(f"{path}: {key!r} must be an object or null")
    if cfg.prefix is not None and (not isinstance(cfg.prefix, dict)
                                   or cfg.prefix.get("file") != PREFIX_FILE):
        raise CheckpointError(f"{path}: 'prefix' must be null or an object naming its state "
                              f"file ({PREFIX_FILE!r})")
    if not isinstance(cfg.digests, dict) or not all(
            isinstance(k, str) and Path(k).name == k and isinstance(v, str)
            and v.startswith(f"{DIGEST}:") and len(v) == len(DIGEST) + 65
            for k, v in cfg.digests.items()):
        raise CheckpointError(f"{path}: 'digests' must map file names to \"{DIGEST}:<64 hex "
                              "digits>\"")
    return cfg


def save_spiking(model: HybridForCausalLM, directory: str | Path, force: bool = False,
                 max_shard_bytes: int | None = None,
                 extra_files: Mapping[str, str] | None = None) -> Path:
    """Write a converted model (from :func:`sbsnn.convert`) as a spiking checkpoint.

    ``extra_files``: file name -> text, written into the same directory before it appears
    (``sbsnn convert --calibrate`` puts ``calibration.json`` there)."""
    cfg = getattr(model, "spiking_config", None)
    if not isinstance(cfg, SpikingConfig):
        raise CheckpointKindError("save_spiking needs a model returned by sbsnn.convert (this one "
                                  "has no spiking_config: it is a float model)")
    check_int(max_shard_bytes, "max_shard_bytes", minimum=1, none_ok=True, hint=" (None: one file)")
    pre = prefix_of(model)
    # the prefix the model carries now (attached after conversion, or taken away) is saved
    cfg = dataclasses.replace(cfg, prefix=None if pre is None else pre.metadata())
    if pre is not None:
        cfg.format_version = max(cfg.format_version, 3)
    with atomic_directory(directory, force) as tmp:
        save_pretrained(model, tmp, max_shard_bytes=max_shard_bytes)
        if pre is not None:
            write_safetensors({k: v.cpu() for k, v in pre.tensors().items()}, tmp / PREFIX_FILE)
        tok = getattr(model, "tokenizer", None)
        if hasattr(tok, "to_json"):  # a Hugging Face tokenizer travels with the weights
            (tmp / "tokenizer.json").write_text(tok.to_json())
        for name, text in (extra_files or {}).items():
            if Path(name).name != name or name in (SPIKING_CONFIG, "config.json", PREFIX_FILE):
                raise OptionError(f"extra file {name!r}: give a plain file name that is not "
                                  "one of the checkpoint's own files")
            (tmp / name).write_text(text, encoding="utf-8")
        write_spiking_config(tmp, cfg)   # last: its digests cover every file above
    return Path(directory)


_log = logging.getLogger("sbsnn")


def load_spiking(directory: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, verify: bool = True) -> HybridForCausalLM:
    """Rebuild a spiking model saved by :func:`save_spiking` or ``sbsnn convert``.

    ``dtype`` applies to the floating tensors (INT8 codes stay INT8); by default as
    :func:`sbsnn.models.load_model` does (float16 computes in float32 on a CPU).

    Verified on load: every weight code in [-127, 127], every scale finite and >= 0 (0
    only over a group of zero codes), the shapes against ``config.json``; with ``verify``
    (the default) also the content digest of every file and the finiteness of every float
    tensor (``verify=False`` skips these two, for speed on large models). A checkpoint
    written before sbsnn recorded digests loads with an info-level log line instead."""
    if not isinstance(directory, (str, os.PathLike)):
        raise OptionError(f"load_spiking takes a path, got {type(directory).__name__}")
    check_device_dtype(device, dtype)
    if not isinstance(verify, bool):
        raise OptionError(f"verify must be True or False, got {verify!r}")
    d = Path(directory)
    if isinstance(directory, str) and directory in EMBEDDED:
        d = EMBEDDED[directory]
    if not d.is_dir():
        if d.is_file():
            raise CheckpointKindError(f"{d}: a file (a float .gguf checkpoint?), but a spiking "
                                      "checkpoint is a directory: make one with sbsnn convert "
                                      "SRC OUT")
        why = "not a directory"
        if not d.exists():
            why = ("a broken symbolic link or a link loop (not a directory)" if d.is_symlink()
                   else "no such file or directory (not a directory)")
        raise CheckpointError(f"{d}: {why}; a spiking checkpoint is a directory written by "
                              "sbsnn convert")
    scfg = read_spiking_config(d)
    if verify and not verify_digests(d, scfg):
        _log.info("%s: no content digests (written before sbsnn recorded them); its files "
                  "are not verified", d)
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
    check_spiking_tensors(model, raw, origin, finite_floats=verify)
    model.eval()
    model.tokenizer = tokenizer_or_none(d, cfg.vocab_size)
    if scfg.prefix is not None:
        model.prefix = read_prefix(model, d, scfg.prefix)
    return model


def read_prefix(model, directory: Path, meta: dict) -> ConstantPrefix:
    """The constant prefix of a spiking checkpoint, checked against ``model`` (its state
    must be the layout of the model's own state after the prefix; refused by tensor name)."""
    path = Path(directory) / PREFIX_FILE
    if not path.is_file():
        raise IntegrityError(f"{path}: missing, but {SPIKING_CONFIG} records a constant prefix; "
                             "the checkpoint is incomplete: convert it again")
    return ConstantPrefix.from_tensors(model, read_safetensors(path), meta, where=str(path))


def check_spiking_tensors(model, raw: dict, origin: dict, finite_floats: bool = True) -> None:
    """The values a spiking checkpoint's format promises (docs/spiking-checkpoint.md):
    codes in [-127, 127], scales finite and >= 0 (0 only over zero codes), and with
    ``finite_floats`` no NaN or Inf in any float tensor. Errors name tensor and file."""
    def where(key: str) -> str:
        return str(origin.get(key, "the checkpoint"))

    for name, m in model.named_modules():
        if not isinstance(m, SpikingLinear) or m.weight_codes.is_meta:   # not loaded (a stage)
            continue
        codes, scales = m.weight_codes, m.weight_scales
        key = f"{name}.weight_codes"
        lo = int(codes.min()) if codes.numel() else 0
        if lo < -CODE_MAX:
            row, col = (int(i) for i in (codes < -CODE_MAX).nonzero()[0])
            raise IntegrityError(f"{where(key)}: tensor {key!r} holds the code {lo} at [{row}, "
                                 f"{col}], outside the format's [-{CODE_MAX}, {CODE_MAX}]; the file "
                                 "is damaged or was not written by sbsnn: convert it again")
        skey = f"{name}.weight_scales"
        bad = ~torch.isfinite(scales) | (scales < 0)
        if bool(bad.any()):
            row, g = (int(i) for i in bad.nonzero()[0])
            raise IntegrityError(f"{where(skey)}: tensor {skey!r} holds the scale "
                                 f"{float(scales[row, g])} at [{row}, {g}]; scales are finite and "
                                 ">= 0: the file is damaged: convert it again")
        zero = scales == 0
        if bool(zero.any()):
            G = num_groups(m.in_features, m.group_size)
            pad = G * m.group_size - m.in_features
            live = torch.nn.functional.pad(codes, (0, pad)).view(m.out_features, G, m.group_size)
            wrong = zero & (live != 0).any(-1)
            if bool(wrong.any()):
                row, g = (int(i) for i in wrong.nonzero()[0])
                raise IntegrityError(f"{where(skey)}: tensor {skey!r} has scale 0 at [{row}, {g}] "
                                     f"over nonzero codes in {key!r} (a zero group has zero codes): "
                                     "the file is damaged: convert it again")
    if finite_floats:
        for key, t in raw.items():
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"{where(key)}: tensor {key!r} holds NaN or Inf (in the "
                                     "weights); the checkpoint is damaged: convert it again",
                                     layer=key.rsplit(".", 1)[0], origin="weights")
