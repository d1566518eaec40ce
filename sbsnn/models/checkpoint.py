"""Reading and writing checkpoints: a directory with ``config.json`` and safetensors.

Layouts read: ``model.safetensors``; sharded ``model.safetensors.index.json`` plus its
shards; and, only when the caller opts in with ``allow_pickle=True``,
``pytorch_model.bin`` (or its index), loaded with ``torch.load(weights_only=True)``.

Safetensors files are memory-mapped: the header is parsed here, each tensor is a view
of the mapped file, so loading reads only what is used and holds no second copy.
Every problem names the file and the tensor: missing, unexpected or misshapen
tensors, truncated files, unknown architectures.

Tensor names: SpikingBrain-7B's (``model.embeddings``, ``model.layers.{i}.attn.*``,
``.attn_norm``, ``.mlp_norm``, ``.mlp.*``, ``model.norm``, ``lm_head``) are sbsnn's own;
the Hugging Face families' names (``embed_tokens``, ``self_attn``, ``input_layernorm``,
``post_attention_layernorm``, Gemma's feed-forward norms) are renamed on the way in
(:func:`sbsnn.models.families.rename_key`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sbsnn.checks import check_input_file, read_json_file
from sbsnn.errors import OptionError, os_error
from sbsnn.fsutil import apply_umask, current_umask, write_atomically
from sbsnn.models.config import HybridConfig
from sbsnn.models.errors import CheckpointError, CheckpointKindError, SafetensorsError
from sbsnn.models.families import (NOT_CONFIG_KEYS, RENAMES, SKIPPED_TENSORS, TENSOR_TRANSFORMS,
                                   rename_key)
from sbsnn.models.gguf import is_gguf, read_gguf
from sbsnn.models.hybrid import HybridForCausalLM
from sbsnn.models.tokenizer import tokenizer_for

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
EMBEDDED = {"tiny-hybrid": DATA_DIR / "tiny-hybrid"}

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_NUMPY_CARRIER = {  # numpy dtype that maps the same bytes (bf16 is viewed afterwards)
    torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16,
    torch.bfloat16: np.int16, torch.int64: np.int64, torch.int32: np.int32,
    torch.int16: np.int16, torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_,
}

# Buffers some writers store that carry nothing we need.
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.masked_bias)$")


# ----------------------------------------------------------------------------- reading
# Every dtype the safetensors format defines, with its size in bits (the library's list);
# sbsnn computes with those of SAFETENSORS_DTYPES and refuses the others by name.
FORMAT_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}
MAX_HEADER_BYTES = 100_000_000     # the safetensors library's bound
_U64_MAX = 2 ** 64 - 1


def _strict_pairs(pairs):
    """A JSON object that refuses a name given twice (json keeps the last silently)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


class _Duplicate(ValueError):
    pass


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _u64(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64_MAX


def read_safetensors_header(path: str | Path) -> tuple[int, dict[str, dict]]:
    """``(header bytes N, {tensor: {dtype, shape, data_offsets}})`` of a safetensors file,
    checked as strictly as the ``safetensors`` library checks it: the 8-byte length within
    its 100 MB bound and the file, a UTF-8 JSON object, ``__metadata__`` a map of strings,
    each entry's dtype one of the format's, its shape and offsets unsigned integers, the
    offsets (in order) tiling the data exactly from 0 to the end of the file with the bytes
    each shape and dtype need. Also refused: a tensor name given twice (the library would
    keep one silently). Raises :class:`SafetensorsError` naming the file and tensor."""
    path = check_input_file(path, "a safetensors file", error=SafetensorsError)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{path}: truncated file ({size} bytes): no safetensors "
                                       "header; re-download or re-save it")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise SafetensorsError(f"{path}: not a safetensors file (its header would be "
                                       f"{n:,} bytes, beyond the format's {MAX_HEADER_BYTES:,})")
            if 8 + n > size:
                raise SafetensorsError(f"{path}: truncated or not a safetensors file (header "
                                       f"claims {n:,} bytes, the file has {size:,})")
            raw = f.read(n)
    except OSError as e:
        from sbsnn.errors import os_error

        raise os_error(e, path, "reading the weights") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"{path}: corrupt safetensors header (not UTF-8 at byte "
                               f"{8 + e.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_strict_pairs, parse_constant=_no_constant)
    except _Duplicate as e:
        raise SafetensorsError(f"{path}: corrupt safetensors header: tensor {e.args[0]!r} is "
                               "listed twice (which entry holds?)") from None
    except ValueError as e:
        raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (a JSON object is expected, "
                               f"got {type(header).__name__})")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        raise SafetensorsError(f"{path}: corrupt safetensors header ('__metadata__' must map "
                               "names to strings)")
    entries = []
    for name, meta in header.items():
        ok = isinstance(meta, dict) and {"dtype", "shape", "data_offsets"} <= set(meta)
        if ok:
            dt, shape, offs = meta["dtype"], meta["shape"], meta["data_offsets"]
            ok = (isinstance(dt, str) and dt in FORMAT_DTYPE_BITS and isinstance(shape, list)
                  and all(_u64(d) for d in shape) and isinstance(offs, list) and len(offs) == 2
                  and all(_u64(o) for o in offs))
        if not ok:
            raise SafetensorsError(f"{path}: tensor {name!r} has an unreadable header entry "
                                   f"{meta!r} (dtype one of {', '.join(FORMAT_DTYPE_BITS)}; "
                                   "shape and data_offsets unsigned integers)")
        entries.append((tuple(offs), name, meta))
    entries.sort(key=lambda e: e[0])
    end = 0
    for (s, e), name, meta in entries:
        if s != end or e < s:
            raise SafetensorsError(f"{path}: tensor {name!r} has invalid data_offsets {[s, e]}: "
                                   f"the tensors' bytes must follow each other without gap or "
                                   f"overlap (this one should start at {end}); the file is corrupt")
        nbits = FORMAT_DTYPE_BITS[meta["dtype"]]
        for d in meta["shape"]:
            nbits *= d
        if nbits % 8 or e - s != nbits // 8:
            raise SafetensorsError(f"{path}: tensor {name!r}: {e - s} bytes stored for shape "
                                   f"{meta['shape']} of {meta['dtype']}")
        end = e
    if 8 + n + end > size:
        cut = next(name for (_, e), name, _ in entries if 8 + n + e > size)
        raise SafetensorsError(f"{path}: truncated file: tensor {cut!r} needs bytes up to "
                               f"{8 + n + end:,} (the tensors' end), the file has {size:,}; "
                               "re-download or re-save it")
    if 8 + n + end < size:
        raise SafetensorsError(f"{path}: {size - 8 - n - end:,} bytes after the last tensor "
                               f"({entries[-1][1] if entries else 'there is none'!r}) that no tensor "
                               "covers (the file is corrupt or was appended to)")
    return n, {name: meta for _, name, meta in entries}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Memory-map one safetensors file; tensors are copy-on-write views of the file.
    The header is checked by :func:`read_safetensors_header`; a tensor of a dtype sbsnn
    does not compute with (FP8, unsigned 16/32/64-bit, complex) is refused by name."""
    path = Path(path)
    n, header = read_safetensors_header(path)
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    mm = None
    for name, meta in header.items():
        dtype = SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {meta['dtype']}, which "
                                   f"sbsnn does not read ({', '.join(SAFETENSORS_DTYPES)}); "
                                   "convert it to one of those")
        start, end = meta["data_offsets"]
        shape = meta["shape"]
        if end == start:
            t = torch.empty(shape, dtype=dtype)
        else:
            if mm is None:
                try:
                    mm = np.memmap(path, dtype=np.uint8, mode="c")
                except OSError as e:
                    from sbsnn.errors import os_error

                    raise os_error(e, path, "mapping the weights") from None
            arr = mm[base + start:base + end].view(_NUMPY_CARRIER[dtype]).reshape(shape)
            t = torch.from_numpy(arr)
            t = t.view(torch.bfloat16) if dtype == torch.bfloat16 else t
        out[name] = t
    return out


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    check_input_file(path, "a pickle checkpoint", error=CheckpointError)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here
        raise CheckpointError(f"{path}: cannot be read with weights_only=True ({e})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    return sd


def read_state_dict(directory: str | Path, allow_pickle: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """All tensors of a checkpoint directory, and the file each came from.

    Layouts, as ``transformers`` looks for them: ``model.safetensors``; a sharded
    ``model.safetensors.index.json`` and the shards it lists (every tensor of a shard must
    be listed there, for that shard); other ``*.safetensors`` files when neither is there;
    pickle files only with ``allow_pickle``. Ambiguity is refused by name: both a single
    file and an index, a tensor in two files, a shard holding a tensor its index does not
    give it, an index naming a file that is missing or lies outside the directory.
    """
    d = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}

    def add(file: Path, part: dict[str, torch.Tensor]) -> None:
        for k, v in part.items():
            if k in tensors:
                raise SafetensorsError(f"{file}: tensor {k!r} is also in {origin[k]}; which one "
                                       "holds? Remove the stale file")
            tensors[k] = v
            origin[k] = file

    index = d / "model.safetensors.index.json"
    single = d / "model.safetensors"
    if index.exists() and single.exists():
        raise SafetensorsError(f"{d}: both model.safetensors and model.safetensors.index.json; "
                               "they may hold different weights (transformers reads the single "
                               "file, older sbsnn the index): remove the one that is stale")
    if index.exists():
        weight_map = _read_index(index)
        for shard in sorted(set(weight_map.values())):
            part = read_safetensors(d / shard)
            listed = {k for k, s in weight_map.items() if s == shard}
            absent = sorted(listed - part.keys())
            if absent:
                raise SafetensorsError(f"{d / shard}: tensor {absent[0]!r} is listed in "
                                       f"{index.name} but missing from this shard "
                                       f"({len(absent)} missing)")
            extra = sorted(part.keys() - listed)
            if extra:
                elsewhere = weight_map.get(extra[0])
                raise SafetensorsError(
                    f"{d / shard}: holds tensor {extra[0]!r}, which {index.name} "
                    + (f"places in {elsewhere}" if elsewhere else "does not list")
                    + f" ({len(extra)} such tensors); the index and the shards disagree: "
                    "re-save the checkpoint")
            add(d / shard, part)
        return tensors, origin
    if single.exists():
        add(single, read_safetensors(single))
        return tensors, origin
    try:
        others = sorted(p.name for p in d.glob("*.safetensors"))
    except OSError as e:
        from sbsnn.errors import os_error

        raise os_error(e, d, "listing the weights") from None
    if others:  # some writers use other names (e.g. a lone "weights.safetensors")
        for name in others:
            add(d / name, read_safetensors(d / name))
        return tensors, origin
    pickles = sorted(p for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth")) if d.is_dir() else []
    if pickles:
        if not allow_pickle:
            raise CheckpointError(
                f"{d}: only pickle weights ({', '.join(p.name for p in pickles)}); pickle files can "
                "run code when loaded, so sbsnn refuses them by default. Convert them to "
                "safetensors, or pass allow_pickle=True (--allow-pickle) to load them with "
                "torch.load(weights_only=True)")
        for p in pickles:
            add(p, _read_pickle(p))
        return tensors, origin
    raise CheckpointError(f"{d}: no weights found (expected model.safetensors or "
                          "model.safetensors.index.json)")


def _read_index(index: Path) -> dict[str, str]:
    doc = read_json_file(index, "the shard index", error=SafetensorsError)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SafetensorsError(f"{index}: not a valid index: it needs a 'weight_map' mapping "
                               "tensor names to shard file names")
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise SafetensorsError(f"{index}: shard {shard!r} is not a file name in the "
                                   "checkpoint directory (paths are not followed)")
        if not (index.parent / shard).is_file():
            raise SafetensorsError(f"{index.parent / shard}: shard listed in {index.name} "
                                   "is missing")
    return weight_map


# ----------------------------------------------------------------------------- loading
@dataclass
class OpenedCheckpoint:
    """What a source holds, before any model is built: the config, the raw tensors (views
    of memory-mapped files for safetensors; dequantized float32 for GGUF), the file each
    tensor came from, and the tokenizer."""

    source: Path                       # the directory or the GGUF file
    config: HybridConfig
    raw: dict[str, torch.Tensor]
    origin: dict[str, Path]
    tokenizer: object | None

    @property
    def is_gguf(self) -> bool:
        return self.source.is_file()

    def write_beside(self, out: Path) -> None:
        """Write into ``out`` the config and tokenizer files a converted copy needs:
        config.json (a GGUF's config as transformers builds it) and the tokenizer."""
        if self.is_gguf:
            (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            (out / "tokenizer.json").write_text(self.tokenizer.to_json())
            return
        for name in ("config.json", *TOKENIZER_FILES):
            src = self.source / name
            if name == "config.json" or src.exists() or src.is_symlink():
                shutil.copyfile(source_file(self.source, name), out / name)


def source_file(directory: Path, name: str) -> Path:
    """The file ``name`` of checkpoint ``directory``, safe to copy into an output: a regular
    file (not a pipe or device, which could block or never end), and, symlinks followed,
    inside the directory (or, for a Hugging Face cache snapshot, in its repository's
    ``blobs``): a link that leads elsewhere would copy bytes from outside the checkpoint
    into the output and its digests. A JSON file must parse. Refusals name the file."""
    p = directory / name
    check_input_file(p, f"the checkpoint's {name}", error=CheckpointError)
    real, root = p.resolve(), directory.resolve()
    roots = [root]
    if root.parent.name == "snapshots":          # <cache>/models--org--name/snapshots/<rev>
        roots.append(root.parent.parent / "blobs")
    if not any(real == r or r in real.parents for r in roots):
        raise CheckpointError(f"{p}: a link to {real}, outside the checkpoint {root}; sbsnn "
                              "copies a checkpoint's own files only: replace the link with the "
                              "file itself")
    if name.endswith(".json"):
        read_json_file(p, f"the checkpoint's {name}", error=CheckpointError)
    return p


# Files copied unchanged beside a converted checkpoint (tokenizers and the like).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


def open_checkpoint(src: str | Path, allow_pickle: bool = False,
                    progress: bool = False) -> OpenedCheckpoint:
    """Open a checkpoint directory, a GGUF file or an embedded name (nothing built yet)."""
    p = resolve(src)
    _refuse_spiking(p)
    if p.is_file():
        if not is_gguf(p):
            raise CheckpointError(f"{p}: a file, but not a GGUF file (no GGUF magic bytes); give "
                                  "a checkpoint directory (config.json + *.safetensors) or a .gguf file")
        ck = read_gguf(p, progress=progress)
        cfg = HybridConfig.from_dict(ck.config, source=f"{p} (metadata)")
        origin = {k: p for k in ck.tensors}
        return OpenedCheckpoint(p, untie_if_head_stored(cfg, ck.tensors, origin), ck.tensors,
                                origin, ck.tokenizer)
    if not p.is_dir():
        what = (f"give a checkpoint directory holding config.json and *.safetensors, a .gguf "
                f"file, or one of {sorted(EMBEDDED)}")
        why = "not a directory"
        if not p.exists():
            why = "no such file or directory (not a directory, nor a .gguf file)"
            if p.is_symlink():
                try:
                    p.resolve(strict=True)
                    why = "a broken symbolic link (not a directory)"
                except RuntimeError:           # Python < 3.13: a loop
                    why = "a symbolic link loop (not a directory)"
                except OSError as e:
                    why = ("a symbolic link loop (not a directory)" if e.errno == errno.ELOOP
                           else "a broken symbolic link (not a directory)")
        raise CheckpointError(f"{p}: {why}; {what}")
    cfg = HybridConfig.from_json(p / "config.json")
    raw, origin = read_state_dict(p, allow_pickle=allow_pickle)
    try:
        tok = tokenizer_for(p, cfg.vocab_size)
    except ImportError as e:
        warnings.warn(f"{p}: model loaded without its tokenizer: {e}", stacklevel=3)
        tok = None
    return OpenedCheckpoint(p, untie_if_head_stored(cfg, raw, origin), raw, origin, tok)


def check_device_dtype(device, dtype) -> None:
    """``device`` one torch understands; ``dtype`` None or a floating torch dtype."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise OptionError(f"dtype must be None or a floating torch.dtype (torch.float32, "
                          f"torch.bfloat16, ...), got {dtype!r}")
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise OptionError(f"device {device!r} is not a torch device ({e})") from None


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, allow_pickle: bool = False,
                    progress: bool = False) -> HybridForCausalLM:
    """Build the model a checkpoint directory (or GGUF file) describes and fill it.

    ``dtype``: convert floating tensors to this dtype. Default: keep the checkpoint's,
    except that float16 weights compute in float32 on a CPU (see :func:`default_dtype`).
    """
    check_device_dtype(device, dtype)
    ck = open_checkpoint(directory, allow_pickle=allow_pickle, progress=progress)
    with torch.device("meta"):
        model = HybridForCausalLM(ck.config)
    fill_state(model, ck.raw, ck.origin, ck.source, ck.config.model_type, device=device,
               dtype=default_dtype(ck.raw, device) if dtype is None else dtype)
    model.eval()
    model.tokenizer = ck.tokenizer
    for note in ck.config.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return model


# Written by sbsnn.converters beside a spiking checkpoint's weights; the float readers
# recognise it only to refuse such a directory by name.
SPIKING_MARKER = "spiking_config.json"


def _refuse_spiking(p: Path) -> None:
    if p.is_dir() and (p / SPIKING_MARKER).exists():
        raise CheckpointKindError(
            f"{p}: is a spiking checkpoint (written by sbsnn convert), but a float checkpoint "
            "is expected here; load it with sbsnn.load_spiking (the CLI's simulate and "
            "generate read it), or give the float checkpoint it was converted from")


def untie_if_head_stored(cfg: HybridConfig, raw: dict[str, torch.Tensor],
                         origin: dict[str, Path]) -> HybridConfig:
    """``tie_word_embeddings: true`` as ``transformers`` (5.x, ``tie_weights`` during
    ``from_pretrained``) applies it when the checkpoint stores an ``lm_head.weight``:

    - stored and different from the embeddings: not tied (the stored head is used), so
      sbsnn builds an untied model too;
    - stored and equal: tied;
    - stored with no embeddings: tied the other way (the embeddings are the stored head);
      ``raw`` then gets the embeddings' name for the same tensor.

    The config file is left as it is."""
    if not cfg.tie_word_embeddings or "lm_head.weight" not in raw:
        return cfg
    emb_key = next((k for k in raw if rename_key(k, cfg.model_type) == "model.embeddings.weight"), None)
    head = raw["lm_head.weight"]
    if emb_key is None:
        name = "model.embed_tokens.weight" if cfg.model_type in RENAMES else "model.embeddings.weight"
        raw[name] = raw.pop("lm_head.weight")
        origin[name] = origin.pop("lm_head.weight")
        return cfg
    emb = raw[emb_key]
    if emb.shape == head.shape and emb.dtype == head.dtype and torch.equal(emb, head):
        return cfg
    if emb.shape == head.shape and torch.equal(emb.to(torch.float32), head.to(torch.float32)):
        return cfg
    import dataclasses

    return dataclasses.replace(cfg, tie_word_embeddings=False)


def default_dtype(raw: dict[str, torch.Tensor], device) -> torch.dtype | None:
    """float32 for float16 checkpoints on a CPU (its float16 arithmetic is slow and
    loses precision; the embedded model ships float16), else None (keep as stored)."""
    if torch.device(device).type == "cpu" and any(t.dtype == torch.float16 for t in raw.values()):
        return torch.float32
    return None


_SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "moe_intermediate_size", "num_experts",
              "shared_expert_intermediate_size")


def _defaulted_sizes(cfg) -> str:
    """The cause behind a shape mismatch when config.json leaves out a size: those keys
    took their family's default (as transformers' config class gives them)."""
    given = getattr(cfg, "source_config", None)
    if not isinstance(given, dict):
        return ""
    if isinstance(given.get("text_config"), dict):     # a vision-language config's text model
        given = given["text_config"]
    absent = [k for k in _SIZE_KEYS if k not in given and getattr(cfg, k, None) not in (None, 0)
              and k not in NOT_CONFIG_KEYS.get(cfg.model_type, ())]
    if not absent:
        return ""
    shown = ", ".join(f"{k} (default {getattr(cfg, k)})" for k in absent)
    return (f"; config.json leaves out {shown}, so the family's defaults were used: give the "
            "checkpoint's real values")


# Which config keys set a tensor's shape (by sbsnn module name), named when it mismatches:
# the cause is then a config value (a null read as transformers reads it, a wrong size),
# not the tensor.
_SHAPE_KEYS = (
    (re.compile(r"\.mlp\.router\."), ("num_experts", "hidden_size")),
    (re.compile(r"\.mlp\.experts\.\d+\."), ("moe_intermediate_size", "hidden_size")),
    (re.compile(r"\.mlp\.shared_experts\.\d+\."), ("shared_expert_intermediate_size", "hidden_size")),
    (re.compile(r"(^|\.)(embeddings|lm_head)\."), ("vocab_size", "hidden_size")),
    (re.compile(r"\.(q_proj)\."), ("num_attention_heads", "head_dim", "hidden_size")),
    (re.compile(r"\.(k_proj|v_proj)\."), ("num_key_value_heads", "head_dim", "hidden_size")),
    (re.compile(r"\.(o_proj)\."), ("hidden_size", "num_attention_heads", "head_dim")),
    (re.compile(r"\.(q_norm|k_norm)\."), ("head_dim",)),
    (re.compile(r"\.(gate_proj|up_proj|down_proj)\."), ("intermediate_size", "hidden_size")),
    (re.compile(r"norm\.weight$"), ("hidden_size",)),
)


def _shape_cause(name: str, cfg, where: str) -> str:
    """ ``" (from <where>: 'key' = v, ...)"``: the config values that set tensor ``name``'s
    shape, or "" when none is known."""
    for pattern, keys in _SHAPE_KEYS:
        if cfg is not None and pattern.search(name):
            values = ", ".join(f"{k!r} = {getattr(cfg, k, None)!r}" for k in keys)
            return f" (from {where}: {values}); the config or the weights are not this model's"
    return ""


def fill_state(model: torch.nn.Module, raw: dict[str, torch.Tensor], origin: dict[str, Path],
               directory: Path, model_type: str = "sbsnn_hybrid",
               device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
    """Check ``raw`` tensors against ``model``'s state dict (names, shapes, dtypes) and
    assign them (``model`` may live on the meta device). Errors name file and tensor.

    Floating tensors may come in any float dtype (converted to ``dtype`` if given);
    integer tensors (INT8 codes) must have exactly the expected dtype.
    """
    expected = model.state_dict()
    made: dict[str, str] = {}   # a tensor a family's transform made -> what it came from
    if model_type in TENSOR_TRANSFORMS:
        raw, origin, made = TENSOR_TRANSFORMS[model_type](raw, origin)
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # sbsnn name -> name in the file (or made from it)
    unexpected = []
    skipped = SKIPPED_TENSORS.get(model_type)
    for key, t in raw.items():
        if skipped is not None and skipped.search(key):
            continue    # a vision tower, a prediction head the causal LM does not load
        name = rename_key(key, model_type)
        if name in state:
            raise CheckpointError(f"{origin[key]}: tensors {made.get(source[name], source[name])!r} "
                                  f"and {made.get(key, key)!r} are the "
                                  f"same parameter ({name!r}) under two names; keep one")
        if name in expected:
            state[name] = t
            source[name] = key
        elif name == "lm_head.weight" and "lm_head.weight" not in expected:
            continue  # tied head stored equal to the embeddings (untie_if_head_stored)
        elif not _IGNORED.search(name):
            unexpected.append((key, origin[key]))
    if unexpected:
        key, file = unexpected[0]
        raise CheckpointError(f"{file}: unexpected tensor {made.get(key, key)!r} (not part of this "
                              f"{model_type} model as config.json describes it; "
                              f"{len(unexpected)} unexpected in all)")
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{directory}: tensor {missing[0]!r} is missing "
                              f"({len(missing)} missing in all, e.g. {missing[:3]})")
    for name, t in state.items():
        want, key = expected[name], source[name]
        shown = made.get(key, key)
        if tuple(t.shape) != tuple(want.shape):
            where = (f"{Path(directory) / 'config.json'}" if Path(directory).is_dir()
                     else "the config")
            raise CheckpointError(f"{origin[key]}: tensor {shown!r} has shape {tuple(t.shape)}, "
                                  f"config.json implies {tuple(want.shape)}"
                                  + _shape_cause(name, getattr(model, "config", None), where)
                                  + _defaulted_sizes(getattr(model, "config", None)))
        if want.is_floating_point():
            if not t.is_floating_point():
                raise CheckpointError(f"{origin[key]}: tensor {shown!r} has dtype {t.dtype}; "
                                      "floating-point values are expected here")
            if dtype is not None:
                t = t.to(dtype)
        elif t.dtype != want.dtype:
            raise CheckpointError(f"{origin[key]}: tensor {shown!r} has dtype {t.dtype}, "
                                  f"expected {want.dtype}")
        state[name] = t.to(device)
    model.load_state_dict(state, assign=True)
    for name, b in model.named_buffers():
        if b.is_meta:
            raise CheckpointError(f"internal: buffer {name} was not initialised")


def resolve(name_or_dir: str | Path) -> Path:
    """An embedded model name, or the path given (a directory or a GGUF file)."""
    if isinstance(name_or_dir, str) and name_or_dir in EMBEDDED:
        p = EMBEDDED[name_or_dir]
        if not (p / "config.json").exists():
            raise CheckpointError(f"embedded model {name_or_dir!r} is missing from {p}; "
                                  "reinstall sbsnn or run examples/train_tiny.py")
        return p
    return Path(name_or_dir)


def load_model(name_or_dir: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, allow_pickle: bool = False,
               progress: bool = False) -> HybridForCausalLM:
    """Load ``"tiny-hybrid"`` (the embedded default), a checkpoint directory, or a
    llama.cpp ``.gguf`` file (needs the ``gguf`` extra)."""
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise OptionError(f"load_model takes a name or a path, got {type(name_or_dir).__name__}")
    return load_checkpoint(resolve(name_or_dir), device=device, dtype=dtype,
                           allow_pickle=allow_pickle, progress=progress)


# ----------------------------------------------------------------------------- writing
def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, umask: int | None = None) -> None:
    """``safetensors.torch.save_file`` with the user's umask on the file (the writer makes
    it 0600) and a failure to write (a full disk, a file-size limit, no permission)
    raised as the :class:`~sbsnn.errors.PathError` of its kind, naming the file."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except OSError as e:
        raise os_error(e, path, "writing the weights") from None
    except Exception as e:  # noqa: BLE001 - safetensors wraps I/O errors in its own type
        m = re.search(r"(?:code: |os error )(\d+)", str(e))
        if m is None:
            raise
        raise os_error(OSError(int(m.group(1)), os.strerror(int(m.group(1)))), path,
                       "writing the weights") from None
    apply_umask(path, umask)



def save_pretrained(model: HybridForCausalLM, directory: str | Path,
                    max_shard_bytes: int | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` (or shards plus an index).

    The files are written into a temporary folder inside ``directory`` and moved in, the
    config last (:func:`sbsnn.fsutil.write_atomically`), so an interrupted save never
    leaves a directory that loads as complete.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    config = model.config.to_dict()
    floats = {v.dtype for v in tensors.values() if v.is_floating_point()}
    if len(floats) == 1:  # as Hugging Face records it (5.x "dtype", 4.x "torch_dtype")
        config["dtype" if "dtype" in config else "torch_dtype"] = str(floats.pop()).replace("torch.", "")

    def write(tmp: Path) -> list[str]:
        mask = current_umask()
        for name, shard in zip(names, shards):
            write_safetensors(shard, tmp / name, mask)
        written = list(names)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in tensors.values())},
                     "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            written.append("model.safetensors.index.json")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return written + ["config.json"]

    write_atomically(directory, write, final="config.json")
