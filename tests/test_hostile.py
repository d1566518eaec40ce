"""Every command under bad input and faults, as a hostile user would try them.

One table, one case per failure class and command. A case is a command line run through
``sbsnn.cli.main`` in this process (or, for the Python API, a call), after its ``setup``
damaged a copy of a small checkpoint or wrote a bad input. Each case asserts

- the exit status (2 for a refused input; 0 for an input that must give the right answer),
- for a refusal, one line on stderr that names the culprit (file, tensor, layer or
  option) and, where it applies, the bound and its reason; the error class
  (:mod:`sbsnn.errors`);
- that nothing it would have written looks complete (no checkpoint with
  ``spiking_config.json``, no ``report.json``, no recording marked complete), and that
  the inputs it was given are untouched.

The kinds of outcome are counted at the end of the module (``test_outcome_counts``).
Faults that need a real process (signals, a full disk, the umask) run in subprocesses at
the end; hypothesis generates corrupt safetensors headers (held to the ``safetensors``
library) and corrupt configs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import h5py
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import sbsnn
import sbsnn.cli as cli
from sbsnn import errors as E
from sbsnn.converters import convert_checkpoint, load_spiking
from sbsnn.models import HybridConfig, HybridForCausalLM, save_pretrained

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1], sliding_window=8,
            rope_theta=10000.0, gate_low_rank_dim=8)
PROMPT = "ROMEO: But soft, what light through yonder window breaks?"


@pytest.fixture(autouse=True)
def _keep_threads_and_signals():
    n = torch.get_num_threads()
    handler = signal.getsignal(signal.SIGTERM)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    signal.signal(signal.SIGTERM, handler)


def digest_tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small float checkpoint, its spiking form, a recording and their digests."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = HybridForCausalLM(HybridConfig(**TINY))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    save_pretrained(model, root / "src")
    convert_checkpoint(root / "src", root / "spk", progress=False)
    rec = root / "rec.h5"
    sbsnn.simulate(load_spiking(root / "spk"), PROMPT, record=rec, block_size=16)
    (root / "text.txt").write_text(PROMPT * 3)
    b = SimpleNamespace(root=root, src=root / "src", spk=root / "spk", rec=rec,
                        text=root / "text.txt")
    b.digests = {k: digest_tree(getattr(b, k)) for k in ("src", "spk")}
    b.rec_digest = hashlib.sha256(rec.read_bytes()).hexdigest()
    with torch.no_grad():
        b.logits = load_spiking(b.spk)(torch.tensor([list(PROMPT.encode())]))
    return b


# ============================================================================ helpers
def shard_with(d: Path, tensor: str) -> Path:
    index = d / "model.safetensors.index.json"
    if index.exists():
        return d / json.loads(index.read_text())["weight_map"][tensor]
    return d / "model.safetensors"


def copy(base, what: str, tmp: Path, name: str | None = None) -> Path:
    dst = tmp / (name or what)
    shutil.copytree(getattr(base, what), dst)
    return dst


def rewrite_header(path: Path, mutate) -> None:
    """Rewrite a safetensors file: ``mutate(header, data) -> (header or raw bytes, data)``."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    h, data = mutate(header, data)
    hb = h if isinstance(h, bytes) else json.dumps(h).encode()
    path.write_bytes(len(hb).to_bytes(8, "little") + hb + data)


def by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def edit_tensor(d: Path, tensor: str, fn) -> Path:
    """Load the shard holding ``tensor``, apply ``fn`` to it, save the shard back."""
    shard = shard_with(d, tensor)
    t = {k: v.clone() for k, v in load_file(str(shard)).items()}
    t[tensor] = fn(t[tensor])
    save_file(t, str(shard), metadata={"format": "pt"})
    return shard


def redigest(d: Path) -> None:
    """Record the current digests, as if the edited checkpoint had been written so."""
    from sbsnn.converters.format import SPIKING_CONFIG, _digested_files, file_digest

    p = d / SPIKING_CONFIG
    cfg = json.loads(p.read_text())
    cfg["digests"] = {f.name: file_digest(f) for f in _digested_files(d)}
    p.write_text(json.dumps(cfg))


def edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def looks_complete(p: Path) -> bool:
    """What a finished command leaves: a checkpoint, a report, a sweep, a demo summary, an
    evaluation's results, a recording marked complete."""
    if p.is_dir():
        return any((p / n).exists() for n in ("spiking_config.json", "report.json",
                                              "sweep.json", "summary.json", "results.json"))
    if p.is_file() and p.suffix == ".h5":
        try:
            with h5py.File(p, "r") as f:
                return bool(f.attrs.get("complete", False))
        except OSError:
            return False
    return p.exists()


@contextlib.contextmanager
def unprivileged():
    """Run as a user without rights on root's files (root bypasses permissions)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def open_dir() -> Path:
    """A directory anyone may enter (pytest's tmp_path is private to its owner)."""
    d = Path(tempfile.mkdtemp(prefix="sbsnn-hostile-"))
    d.chmod(0o755)
    return d


# ============================================================================ the table
@dataclass
class Case:
    id: str
    outcome: str                       # "error", "bound" (refused with its bound) or "ok"
    argv: list | None = None           # a command line (placeholders: {src} {spk} {rec} {tmp} ...)
    api: Callable | None = None        # or a Python call api(ctx)
    culprit: tuple = ()                # what the message must name (placeholders allowed)
    error: type | None = None          # the sbsnn.errors class expected (None: argparse's own)
    setup: Callable | None = None      # setup(tmp, base) -> extra placeholders
    outputs: tuple = ()                # paths that must not look complete afterwards
    untouched: tuple = ("src", "spk")  # inputs whose files must not change
    check: Callable | None = None      # for "ok": check(ctx, stdout, stderr)
    user: bool = False                 # run without root's rights


def _s(**kw):
    return lambda tmp, b: kw


def _src_copy(mutate=None):
    def setup(tmp, b):
        d = copy(b, "src", tmp)
        out = mutate(d, b) if mutate is not None else None
        return {"s": d, **(out if isinstance(out, dict) else {})}
    return setup


def _spk_copy(mutate=None):
    def setup(tmp, b):
        d = copy(b, "spk", tmp)
        out = mutate(d, b) if mutate is not None else None
        return {"s": d, **(out if isinstance(out, dict) else {})}
    return setup


def _header(fn):
    """A float checkpoint whose model.safetensors header ``fn(header, data)`` rewrote."""
    return _src_copy(lambda d, b: rewrite_header(d / "model.safetensors", fn)
                     or {"first": by_offset(_read_header(d))[0] if _ok_header(d) else ""})


def _read_header(d: Path) -> dict:
    raw = (d / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])


def _ok_header(d: Path) -> bool:
    try:
        _read_header(d)
        return True
    except Exception:  # noqa: BLE001
        return False


def _first_two(h):
    names = by_offset(h)
    return names[0], names[1]


def _gap(h, data):
    a = by_offset(h)[-1]
    s, e = h[a]["data_offsets"]
    h[a]["data_offsets"] = [s + 4, e + 4]
    return h, data + b"\0" * 4


def _overlap(h, data):
    a, b_ = _first_two(h)
    h[b_]["data_offsets"] = list(h[a]["data_offsets"])
    h[b_]["shape"] = list(h[a]["shape"])
    h[b_]["dtype"] = h[a]["dtype"]
    return h, data


def _dup_name(h, data):
    a = by_offset(h)[0]
    body = json.dumps(h)[1:-1]
    raw = "{" + body + ", " + json.dumps(a) + ": " + json.dumps(h[a]) + "}"
    return raw.encode(), data


def _set_entry(key, value):
    def fn(h, data):
        h[by_offset(h)[0]][key] = value
        return h, data
    return fn


def _meta_nonstring(h, data):
    h["__metadata__"] = {"format": 1}
    return h, data


def _split_in_two(d, b):
    """No index, two *.safetensors files that both hold one tensor."""
    t = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(t)
    save_file({k: t[k] for k in names[: len(names) // 2 + 1]}, str(d / "a.safetensors"))
    save_file({k: t[k] for k in names[len(names) // 2:]}, str(d / "b.safetensors"))
    return {"dup": names[len(names) // 2]}


def _index_and_single(d, b):
    t = load_file(str(d / "model.safetensors"))
    save_file(t, str(d / "model-00001-of-00001.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "model-00001-of-00001.safetensors" for k in t}}))


def _index_names(shard_name):
    def fn(d, b):
        t = load_file(str(d / "model.safetensors"))
        (d / "model.safetensors").unlink()
        save_file(t, str(d / "model-00001-of-00001.safetensors"))
        wm = {k: "model-00001-of-00001.safetensors" for k in t}
        wm[sorted(t)[0]] = shard_name
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
        return {"tensor": sorted(t)[0]}
    return fn


def _shard_not_in_index(d, b):
    t = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    save_file(t, str(d / "model-00001-of-00001.safetensors"))
    names = sorted(t)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "model-00001-of-00001.safetensors" for k in names[1:]}}))
    return {"tensor": names[0]}


def _config(fn):
    return _src_copy(lambda d, b: edit_json(d / "config.json", fn))


def _pop(key):
    return lambda c: c.pop(key)


def _put(key, value):
    return lambda c: c.__setitem__(key, value)


def _nan_in(tensor, verify):
    def mutate(d, b):
        edit_tensor(d, tensor, lambda t: t.index_fill(0, torch.tensor([0]), float("nan")))
        if verify:
            redigest(d)
    return mutate


def _code(value):
    name = "model.layers.0.attn.q_proj.weight_codes"

    def mutate(d, b):
        def fn(t):
            t = t.clone()
            t[0, 0] = value
            return t
        return {"file": edit_tensor(d, name, fn).name}
    return mutate


def _scale(value, zero_codes=False):
    name = "model.layers.0.attn.q_proj.weight_scales"

    def mutate(d, b):
        def fn(t):
            t = t.clone()
            t[0, 0] = value
            return t
        return {"file": edit_tensor(d, name, fn).name}
    return mutate


def _flip_byte(d, b):
    shard = shard_with(d, "model.layers.0.attn.q_proj.weight_codes")
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01
    shard.write_bytes(bytes(raw))
    return {"file": shard.name}


def _no_digests(d, b):
    edit_json(d / "spiking_config.json", lambda c: c.pop("digests"))


def _digest_for_missing(d, b):
    edit_json(d / "spiking_config.json",
              lambda c: c["digests"].__setitem__("model-09999.safetensors", "sha256:" + "0" * 64))


def _uncovered_file(d, b):
    (d / "extra.safetensors").write_bytes((d / shard_with(d, "model.norm.weight")).read_bytes())


def _spk_config(key, value):
    return lambda d, b: edit_json(d / "spiking_config.json", lambda c: c.__setitem__(key, value))


def _file(name, data: bytes | str):
    def setup(tmp, b):
        p = tmp / name
        if isinstance(data, str):
            p.write_text(data)
        else:
            p.write_bytes(data)
        return {"f": p}
    return setup


def _dir_with_files(tmp, b):
    d = tmp / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    return {"d": d}


def _loop(tmp, b):
    (tmp / "l1").symlink_to(tmp / "l2")
    (tmp / "l2").symlink_to(tmp / "l1")
    return {"l": tmp / "l1"}


def _unreadable(tmp, b):
    d = open_dir()
    p = d / "secret.txt"
    p.write_text("ROMEO:")
    p.chmod(0)
    return {"f": p, "od": d}


def _readonly_parent(tmp, b):
    d = open_dir()
    shutil.copytree(b.src, d / "src")
    for p in [d / "src", *(d / "src").iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return {"od": d, "s": d / "src"}


def _bad_hdf5(tmp, b):
    """A complete recording with one chunk's bytes overwritten: its checksum fails."""
    p = tmp / "damaged.h5"
    shutil.copy(b.rec, p)
    with h5py.File(p, "r") as f:
        ds = f["layers"][list(f["layers"])[0]]["counts"]
        off = ds.id.get_chunk_info(0).byte_offset
    raw = bytearray(p.read_bytes())
    for i in range(off, off + 16):
        raw[i] ^= 0xFF
    p.write_bytes(bytes(raw))
    return {"f": p}


def _truncated_hdf5(tmp, b):
    p = tmp / "cut.h5"
    p.write_bytes(b.rec.read_bytes()[:1000])
    return {"f": p}


def _bad_fidelity(tmp, b):
    p = tmp / "fid.json"
    p.write_text(json.dumps({"tokens": 10, "float_nll": 1.0, "spiking_nll": 1.1,
                             "top1_agreement": 2.0, "mean_kl": 0.1}))
    return {"f": p}


def _jsonl_bad_line(tmp, b):
    p = tmp / "docs.jsonl"
    p.write_text(json.dumps({"text": "ROMEO: hi"}) + "\n{not json\n")
    return {"f": p}


def _gla_swa_config(tmp, b):
    d = tmp / "gla"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "gla_swa", "vocab_size": 256, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}))
    return {"g": d}


def _tied_with_head(tmp, b):
    """A tied config whose file also stores a different lm_head: transformers uses it."""
    d = copy(b, "src", tmp)
    edit_json(d / "config.json", _put("tie_word_embeddings", True))
    return {"s": d}


def _ok_same_logits(ctx, out, err):
    m = load_spiking(ctx["s"]) if (Path(ctx["s"]) / "spiking_config.json").exists() else None
    if m is not None:
        with torch.no_grad():
            torch.testing.assert_close(m(torch.tensor([list(PROMPT.encode())])), ctx["base"].logits,
                                       rtol=0, atol=0)


def _ok_recording(ctx, out, err):
    from sbsnn.sim import load_recording

    rec = load_recording(ctx["tmp"] / "r.h5")
    try:
        assert rec.complete and rec.layers
        assert sum(rec.rows(n) for n in rec.layers) > 0
    finally:
        rec.close()


def _ok_report(ctx, out, err):
    r = json.loads((ctx["tmp"] / "rep" / "report.json").read_text())
    assert r["sparsity"]["pooled"]["window"] == 100000000
    assert 0 <= r["sparsity"]["pooled"]["slot_sparsity_window"] < 1


def _ok_window(ctx, out, err):
    assert "window 4096" in out, out      # GLAswaConfig's default, as SpikingBrain reads it


def _ok_note(ctx, out, err):
    assert "no content digests" in err and "error" not in err
    _ok_same_logits(ctx, out, err)


def _ok_block(ctx, out, err):
    assert "simulated" in out and " 0 tokens" not in out


def _ok_tied(ctx, out, err):
    m = sbsnn.load_model(ctx["s"])
    assert m.lm_head is not None         # the stored head is used, as transformers does


def _ok_generated(ctx, out):
    want = "".join(load_spiking(ctx["spk"]).stream("RO", 2, temperature=0))
    assert out == "RO" + want, (out, want)


S = "--quiet"
CASES: list[Case] = [
    # ------------------------------------------------------------------ options: range
    Case("simulate-block-size-negative", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--block-size", "-5", "--record", "{tmp}/x.h5", S],
         culprit=("--block-size", "-5"), error=E.OptionError, outputs=("{tmp}/x.h5",)),
    Case("simulate-block-size-zero", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--block-size", "0", S],
         culprit=("--block-size",), error=E.OptionError),
    Case("simulate-max-tokens-negative", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--max-tokens", "-2", S],
         culprit=("--max-tokens", "-2"), error=E.OptionError),
    Case("simulate-max-tokens-zero", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--max-tokens", "0", "--record", "{tmp}/x.h5", S],
         culprit=("--max-tokens",), error=E.OptionError, outputs=("{tmp}/x.h5",)),
    Case("simulate-empty-prompt", "error", ["simulate", "{spk}", "--prompt", "", S],
         culprit=("--prompt",), error=E.OptionError),
    Case("simulate-trace-tokens-below-minus-one", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--trace", "*", "--trace-tokens", "-7", S],
         culprit=("--trace-tokens", "-7"), error=E.OptionError),
    Case("simulate-trace-tokens-without-trace", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--trace-tokens", "5", S],
         culprit=("--trace-tokens", "--trace"), error=E.OptionError),
    Case("simulate-record-events-without-record", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--record-events", S],
         culprit=("--record-events", "--record"), error=E.OptionError),
    Case("simulate-threads-negative", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--threads", "-3", S],
         culprit=("--threads", "-3"), error=E.OptionError),
    Case("simulate-threads-absurd", "bound",
         ["simulate", "{spk}", "--prompt", PROMPT, "--threads", "100000", S],
         culprit=("--threads", "100000", "1,024", "oversubscribe"), error=E.LimitError),
    Case("simulate-trace-glob-matches-nothing", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--trace", "nomatch*", "--record", "{tmp}/x.h5", S],
         culprit=("nomatch*",), error=E.OptionError, outputs=("{tmp}/x.h5",)),
    Case("simulate-block-size-beyond-the-text", "ok",
         ["simulate", "{spk}", "--prompt", PROMPT, "--block-size", "1000000", S], check=_ok_block),
    Case("report-window-zero", "error",
         ["report", "{rec}", "--out", "{tmp}/rep", "--window", "0"],
         culprit=("--window", "0"), error=E.OptionError, outputs=("{tmp}/rep",)),
    Case("report-window-negative", "error",
         ["report", "{rec}", "--out", "{tmp}/rep", "--window", "-3"],
         culprit=("--window", "-3"), error=E.OptionError, outputs=("{tmp}/rep",)),
    Case("report-window-huge", "ok",
         ["report", "{rec}", "--out", "{tmp}/rep", "--window", "100000000"], check=_ok_report),
    Case("convert-k-absurd", "bound", ["convert", "{src}", "{tmp}/out", "--k", "1e9", S],
         culprit=("--k", "1e+09", "bound is 1000", "time steps"), error=E.LimitError,
         outputs=("{tmp}/out",)),
    Case("convert-k-negative", "error", ["convert", "{src}", "{tmp}/out", "--k", "-1", S],
         culprit=("--k", "-1"), error=E.OptionError, outputs=("{tmp}/out",)),
    Case("convert-k-nan", "error", ["convert", "{src}", "{tmp}/out", "--k", "nan", S],
         culprit=("--k", "nan"), error=E.OptionError, outputs=("{tmp}/out",)),
    Case("convert-k-not-a-number", "error", ["convert", "{src}", "{tmp}/out", "--k", "three", S],
         culprit=("--k", "three"), error=None, outputs=("{tmp}/out",)),
    Case("convert-group-size-zero", "error", ["convert", "{src}", "{tmp}/out", "--group-size", "0", S],
         culprit=("--group-size", "0"), error=E.OptionError, outputs=("{tmp}/out",)),
    Case("convert-group-size-absurd", "bound",
         ["convert", "{src}", "{tmp}/out", "--group-size", "100000000", S],
         culprit=("--group-size", "100000000", "65,536"), error=E.LimitError, outputs=("{tmp}/out",)),
    Case("convert-group-size-wider-than-every-layer", "bound",
         ["convert", "{src}", "{tmp}/out", "--group-size", "4096", S],
         culprit=("group_size=4096", "bound for this model is 128", "has 48 inputs", "--group-size 48"), error=E.LimitError,
         outputs=("{tmp}/out",)),
    Case("convert-exclude-matches-nothing", "error",
         ["convert", "{src}", "{tmp}/out", "--exclude", "*.nothing", S],
         culprit=("*.nothing",), error=E.OptionError, outputs=("{tmp}/out",)),
    Case("convert-targets-match-nothing", "error",
         ["convert", "{src}", "{tmp}/out", "--targets", "*.nothing", S],
         culprit=("*.nothing",), error=E.OptionError, outputs=("{tmp}/out",)),
    Case("eval-limit-zero", "error",
         ["eval", "{src}", "--spiking", "{spk}", "--tasks", "sbsnn_cloze", "--limit", "0",
          "--out", "{tmp}/ev", S],
         culprit=("--limit", "0"), error=E.OptionError, outputs=("{tmp}/ev",)),
    Case("sweep-k-zero", "error", ["sweep", "{src}", "--k", "0", "--out", "{tmp}/sw", S],
         culprit=("--k", "0"), error=E.OptionError, outputs=("{tmp}/sw",)),
    Case("sweep-k-absurd", "bound", ["sweep", "{src}", "--k", "3", "1e6", "--out", "{tmp}/sw", S],
         culprit=("--k", "1e+06", "bound"), error=E.LimitError, outputs=("{tmp}/sw",)),
    Case("sweep-max-chars-negative", "error",
         ["sweep", "{src}", "--k", "3", "--max-chars", "-5", "--out", "{tmp}/sw", S],
         culprit=("--max-chars", "-5"), error=E.OptionError, outputs=("{tmp}/sw",)),
    Case("sweep-max-chars-zero", "error",
         ["sweep", "{src}", "--k", "3", "--max-chars", "0", "--out", "{tmp}/sw", S],
         culprit=("--max-chars", "0"), error=E.OptionError, outputs=("{tmp}/sw",)),
    Case("sweep-profile-unknown", "error",
         ["sweep", "{src}", "--k", "3", "--profile", "nope", "--out", "{tmp}/sw", S],
         culprit=("nope", "horowitz45"), error=E.InputError, outputs=("{tmp}/sw",)),
    Case("generate-max-new-tokens-negative", "error",
         ["generate", "{src}", "--prompt", "RO", "--max-new-tokens", "-3"],
         culprit=("--max-new-tokens", "-3"), error=E.OptionError),
    Case("generate-temperature-negative", "error",
         ["generate", "{src}", "--prompt", "RO", "--temperature", "-1"],
         culprit=("--temperature", "-1"), error=E.OptionError),
    Case("generate-temperature-nan", "error",
         ["generate", "{src}", "--prompt", "RO", "--temperature", "nan"],
         culprit=("--temperature", "nan"), error=E.OptionError),
    Case("generate-top-k-zero", "error", ["generate", "{src}", "--prompt", "RO", "--top-k", "0"],
         culprit=("--top-k", "0"), error=E.OptionError),
    Case("generate-seed-negative", "error", ["generate", "{src}", "--prompt", "RO", "--seed", "-1"],
         culprit=("--seed", "-1"), error=E.OptionError),
    Case("generate-empty-prompt", "error", ["generate", "{src}", "--prompt", ""],
         culprit=("--prompt",), error=E.OptionError),
    Case("demo-max-chars-one", "error", ["demo", "--out", "{tmp}/demo", "--max-chars", "1", S],
         culprit=("--max-chars", "1"), error=E.OptionError, outputs=("{tmp}/demo",)),
    Case("demo-sim-tokens-negative", "error", ["demo", "--out", "{tmp}/demo", "--sim-tokens", "-1", S],
         culprit=("--sim-tokens", "-1"), error=E.OptionError, outputs=("{tmp}/demo",)),
    Case("demo-profile-unknown", "error", ["demo", "--out", "{tmp}/demo", "--profile", "nope", S],
         culprit=("nope",), error=E.InputError, outputs=("{tmp}/demo",)),
    # ------------------------------------------------------------------ options: combinations
    Case("convert-onto-its-source-with-force", "error", ["convert", "{src}", "{src}", "--force", S],
         culprit=("{src}", "is the source"), error=E.OptionError),
    Case("convert-into-its-source", "error", ["convert", "{src}", "{src}/inner", S],
         culprit=("{src}/inner", "lies inside"), error=E.OptionError, outputs=("{src}/inner",)),
    Case("convert-over-a-directory-holding-the-source", "error",
         ["convert", "{s}", "{tmp}", "--force", S], setup=_src_copy(),
         culprit=("{tmp}", "contains"), error=E.OptionError),
    Case("convert-force-over-a-directory-of-other-files", "error",
         ["convert", "{src}", "{d}", "--force", S], setup=_dir_with_files,
         culprit=("{d}", "not a spiking checkpoint", "notes.txt"), error=E.OptionError),
    Case("convert-force-over-a-file", "error", ["convert", "{src}", "{f}", "--force", S],
         setup=_file("out.txt", "mine"), culprit=("{f}", "not a directory"), error=E.OptionError),
    Case("convert-output-exists", "error", ["convert", "{src}", "{spk}", S],
         culprit=("{spk}", "already exists", "--force"), error=E.PathExistsError),
    Case("convert-force-over-a-spiking-checkpoint", "ok",
         ["convert", "{src}", "{s}", "--force", S], setup=_spk_copy(), untouched=("src",),
         check=_ok_same_logits),
    Case("simulate-record-over-the-checkpoint-config", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--record", "{spk}/config.json", S],
         culprit=("{spk}/config.json", "not an sbsnn recording"), error=E.OptionError),
    Case("simulate-record-is-a-directory", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--record", "{tmp}", S],
         culprit=("{tmp}", "directory"), error=E.PathIsDirectoryError),
    Case("simulate-record-in-a-missing-directory", "error",
         ["simulate", "{spk}", "--prompt", PROMPT, "--record", "{tmp}/nodir/x.h5", S],
         culprit=("{tmp}/nodir", "does not exist"), error=E.MissingPathError,
         outputs=("{tmp}/nodir",)),
    Case("simulate-record-over-an-old-recording", "ok",
         ["simulate", "{spk}", "--prompt", PROMPT, "--record", "{tmp}/r.h5", S],
         setup=lambda tmp, b: shutil.copy(b.rec, tmp / "r.h5") and {}, check=_ok_recording),
    Case("report-out-is-a-file", "error", ["report", "{rec}", "--out", "{f}"],
         setup=_file("out.txt", "mine"), culprit=("{f}", "file"), error=E.PathNotDirectoryError),
    Case("sweep-out-is-the-checkpoint", "error", ["sweep", "{src}", "--k", "3", "--out", "{src}", S],
         culprit=("{src}", "is the checkpoint"), error=E.OptionError),
    Case("demo-out-is-a-file", "error", ["demo", "--out", "{f}", S], setup=_file("out.txt", "mine"),
         culprit=("{f}", "file"), error=E.PathNotDirectoryError),
    # ------------------------------------------------------------------ spiking vs float
    Case("convert-a-spiking-checkpoint", "error", ["convert", "{spk}", "{tmp}/out", S],
         culprit=("{spk}", "is a spiking checkpoint", "float checkpoint is expected"),
         error=E.CheckpointKindError, outputs=("{tmp}/out",)),
    Case("simulate-a-float-checkpoint", "error", ["simulate", "{src}", "--prompt", PROMPT, S],
         culprit=("{src}", "is a float checkpoint", "sbsnn convert"), error=E.CheckpointKindError),
    Case("simulate-the-embedded-float-model", "error",
         ["simulate", "tiny-hybrid", "--prompt", PROMPT, S],
         culprit=("tiny-hybrid", "float checkpoint"), error=E.CheckpointKindError),
    Case("simulate-a-weights-file", "error",
         ["simulate", "{src}/model.safetensors", "--prompt", PROMPT, S],
         culprit=("model.safetensors", "spiking checkpoint is a directory"), error=E.CheckpointKindError),
    Case("sweep-a-spiking-checkpoint", "error", ["sweep", "{spk}", "--k", "3", "--out", "{tmp}/sw", S],
         culprit=("{spk}", "is a spiking checkpoint"), error=E.CheckpointKindError,
         outputs=("{tmp}/sw",)),
    Case("generate-with-a-spiking-checkpoint", "ok",
         ["generate", "{spk}", "--prompt", "RO", "--max-new-tokens", "2", "--temperature", "0"],
         check=lambda ctx, out, err: _ok_generated(ctx, out)),
    # ------------------------------------------------------------------ safetensors
    Case("safetensors-trailing-bytes", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(lambda h, d: (h, d + b"\0" * 8)),
         culprit=("{s}/model.safetensors", "bytes after the last tensor"), error=E.SafetensorsError,
         outputs=("{tmp}/out",)),
    Case("safetensors-gap-between-tensors", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(_gap), culprit=("{s}/model.safetensors", "invalid data_offsets"),
         error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-overlapping-tensors", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(_overlap), culprit=("{s}/model.safetensors", "invalid data_offsets"),
         error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-header-longer-than-file", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(lambda d, b: (d / "model.safetensors").write_bytes(
             (10 ** 6).to_bytes(8, "little") + b"{}")),
         culprit=("{s}/model.safetensors", "header claims"), error=E.SafetensorsError,
         outputs=("{tmp}/out",)),
    Case("safetensors-header-not-json", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(lambda h, d: (b"{not json" + b" " * 7, d)),
         culprit=("{s}/model.safetensors", "corrupt safetensors header"), error=E.SafetensorsError,
         outputs=("{tmp}/out",)),
    Case("safetensors-header-nan-constant", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(lambda h, d: (json.dumps(h)[:-1].encode() + b', "__metadata__": {"x": NaN}}', d)),
         culprit=("{s}/model.safetensors", "NaN"), error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-name-twice", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(_dup_name), culprit=("{s}/model.safetensors", "listed twice", "{first}"),
         error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-fp8-dtype", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(lambda h, d: (h.__setitem__(by_offset(h)[0], {
             **h[by_offset(h)[0]], "dtype": "F8_E4M3",
             "shape": [h[by_offset(h)[0]]["data_offsets"][1] - h[by_offset(h)[0]]["data_offsets"][0]]})
             or h, d)),
         culprit=("{s}/model.safetensors", "{first}", "F8_E4M3"), error=E.SafetensorsError,
         outputs=("{tmp}/out",)),
    Case("safetensors-unknown-dtype", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(_set_entry("dtype", "F33")), culprit=("{s}/model.safetensors", "{first}"),
         error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-shape-bytes-mismatch", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(lambda h, d: (h[by_offset(h)[-1]].__setitem__("shape", [1]) or h, d)),
         culprit=("{s}/model.safetensors", "bytes stored for shape"), error=E.SafetensorsError,
         outputs=("{tmp}/out",)),
    Case("safetensors-float-in-shape", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(lambda h, d: (h[by_offset(h)[0]].__setitem__(
             "shape", [float(x) for x in h[by_offset(h)[0]]["shape"]]) or h, d)),
         culprit=("{s}/model.safetensors", "{first}"), error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-metadata-not-strings", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_header(_meta_nonstring), culprit=("{s}/model.safetensors", "__metadata__"),
         error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-truncated", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(lambda d, b: (d / "model.safetensors").write_bytes(
             (d / "model.safetensors").read_bytes()[:-100])),
         culprit=("{s}/model.safetensors", "truncated"), error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-tensor-in-two-files", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(_split_in_two), culprit=("{dup}", "a.safetensors", "b.safetensors"),
         error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-index-and-single-file", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(_index_and_single),
         culprit=("{s}", "model.safetensors.index.json", "stale"), error=E.SafetensorsError,
         outputs=("{tmp}/out",)),
    Case("safetensors-index-names-a-missing-shard", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(_index_names("model-00009-of-00009.safetensors")),
         culprit=("model-00009-of-00009.safetensors", "missing"), error=E.SafetensorsError,
         outputs=("{tmp}/out",)),
    Case("safetensors-index-names-a-path-outside", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(_index_names("../src/model-00001-of-00001.safetensors")),
         culprit=("../src/model-00001-of-00001.safetensors", "not a file name"),
         error=E.SafetensorsError, outputs=("{tmp}/out",)),
    Case("safetensors-shard-holds-an-unlisted-tensor", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(_shard_not_in_index), culprit=("{tensor}", "does not list"),
         error=E.SafetensorsError, outputs=("{tmp}/out",)),
    # ------------------------------------------------------------------ config.json
    Case("config-without-rope-theta", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_config(_pop("rope_theta")), culprit=("{s}/config.json", "rope_theta"),
         error=E.ConfigError, outputs=("{tmp}/out",)),
    Case("config-without-sliding-window", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_config(_pop("sliding_window")), culprit=("{s}/config.json", "sliding_window"),
         error=E.ConfigError, outputs=("{tmp}/out",)),
    Case("config-unknown-key", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_config(_put("rope_flavour", "spicy")), culprit=("{s}/config.json", "rope_flavour"),
         error=E.ConfigError, outputs=("{tmp}/out",)),
    Case("config-rope-theta-true", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_config(_put("rope_theta", True)), culprit=("rope_theta", "True"),
         error=E.ConfigError, outputs=("{tmp}/out",)),
    Case("config-rope-theta-string", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_config(_put("rope_theta", "10000")), culprit=("rope_theta", "'10000'"),
         error=E.ConfigError, outputs=("{tmp}/out",)),
    Case("config-hidden-size-string", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_config(_put("hidden_size", "32")), culprit=("{s}/config.json", "hidden_size"),
         error=E.ConfigError, outputs=("{tmp}/out",)),
    Case("config-not-json", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(lambda d, b: (d / "config.json").write_text("{model_type: sbsnn")),
         culprit=("{s}/config.json", "not valid JSON"), error=E.ConfigError, outputs=("{tmp}/out",)),
    Case("config-not-utf8", "error", ["info", "{s}"],
         setup=_src_copy(lambda d, b: (d / "config.json").write_bytes(b'{"model_type": "\xff"}')),
         culprit=("{s}/config.json", "UTF-8", "byte 16"), error=E.CheckpointError),
    Case("config-is-a-directory", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(lambda d, b: ((d / "config.json").unlink(), (d / "config.json").mkdir())),
         culprit=("{s}/config.json", "directory"), error=E.ConfigError, outputs=("{tmp}/out",)),
    Case("config-gla-swa-defaults-as-its-reference", "ok", ["info", "{g}"], setup=_gla_swa_config,
         check=_ok_window),
    Case("config-tied-with-a-stored-head", "ok",
         ["generate", "{s}", "--prompt", "RO", "--max-new-tokens", "1", "--temperature", "0"],
         setup=_tied_with_head, check=_ok_tied),
    # ------------------------------------------------------------------ spiking verification
    Case("spiking-flipped-byte", "error", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_flip_byte), culprit=("{s}/{file}", "digest mismatch"),
         error=E.IntegrityError),
    Case("spiking-code-minus-128", "error", ["simulate", "{s}", "--prompt", PROMPT, "--no-verify", S],
         setup=_spk_copy(_code(-128)),
         culprit=("{file}", "model.layers.0.attn.q_proj.weight_codes", "-128", "[-127, 127]"),
         error=E.IntegrityError),
    Case("spiking-code-minus-128-verified", "error", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_code(-128)), culprit=("{file}", "digest"), error=E.IntegrityError),
    Case("spiking-negative-scale", "error", ["simulate", "{s}", "--prompt", PROMPT, "--no-verify", S],
         setup=_spk_copy(_scale(-0.5)),
         culprit=("{file}", "model.layers.0.attn.q_proj.weight_scales", "-0.5"), error=E.IntegrityError),
    Case("spiking-nan-scale", "error", ["simulate", "{s}", "--prompt", PROMPT, "--no-verify", S],
         setup=_spk_copy(_scale(float("nan"))),
         culprit=("model.layers.0.attn.q_proj.weight_scales", "nan"), error=E.IntegrityError),
    Case("spiking-zero-scale-over-codes", "error",
         ["simulate", "{s}", "--prompt", PROMPT, "--no-verify", S], setup=_spk_copy(_scale(0.0)),
         culprit=("model.layers.0.attn.q_proj.weight_scales", "scale 0"), error=E.IntegrityError),
    Case("spiking-digest-of-a-missing-file", "error", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_digest_for_missing), culprit=("model-09999.safetensors", "missing"),
         error=E.IntegrityError),
    Case("spiking-file-not-covered-by-digests", "error", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_uncovered_file), culprit=("extra.safetensors", "not covered"),
         error=E.IntegrityError),
    Case("spiking-absurd-k-in-config", "bound", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_spk_config("k", 1e9)), culprit=("spiking_config.json", "k=1e+09", "bound"),
         error=E.CheckpointError),
    Case("spiking-future-format", "error", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_spk_config("format_version", 99)),
         culprit=("spiking_config.json", "99", "upgrade"), error=E.CheckpointError),
    Case("spiking-malformed-digests", "error", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_spk_config("digests", {"config.json": "md5:abc"})),
         culprit=("spiking_config.json", "digests"), error=E.CheckpointError),
    Case("spiking-malformed-prefix", "error", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_spk_config("prefix", {"ids": [1], "file": "other.safetensors"})),
         culprit=("spiking_config.json", "'prefix'", "prefix_state.safetensors"),
         error=E.CheckpointError),
    Case("spiking-prefix-state-missing", "error",
         ["simulate", "{s}", "--prompt", PROMPT, "--no-verify", S],
         setup=_spk_copy(_spk_config("prefix", {"ids": [65], "file": "prefix_state.safetensors"})),
         culprit=("prefix_state.safetensors", "missing"), error=E.IntegrityError),
    Case("spiking-old-checkpoint-without-digests", "ok", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_no_digests), check=_ok_note),
    Case("spiking-no-verify-on-a-good-checkpoint", "ok",
         ["simulate", "{s}", "--prompt", PROMPT, "--no-verify", S], setup=_spk_copy(),
         check=_ok_same_logits),
    # ------------------------------------------------------------------ NaN and Inf
    Case("nan-in-a-converted-weight", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(_nan_in("model.layers.0.attn.q_proj.weight", False)),
         culprit=("model.layers.0.attn.q_proj", "weight", "weights"), error=E.NonFiniteError,
         outputs=("{tmp}/out",)),
    Case("nan-in-a-norm-of-the-source", "error", ["convert", "{s}", "{tmp}/out", S],
         setup=_src_copy(_nan_in("model.layers.0.attn_norm.weight", False)),
         culprit=("model.layers.0.attn_norm.weight", "weights"), error=E.NonFiniteError,
         outputs=("{tmp}/out",)),
    Case("nan-upstream-of-a-spiking-layer", "error",
         ["simulate", "{s}", "--prompt", PROMPT, "--no-verify", "--record", "{tmp}/x.h5", S],
         setup=_spk_copy(_nan_in("model.layers.0.attn_norm.weight", False)),
         culprit=("layer model.layers.0.attn", "activations"), error=E.NonFiniteError,
         outputs=("{tmp}/x.h5",)),
    Case("nan-in-a-float-tensor-verified", "error", ["simulate", "{s}", "--prompt", PROMPT, S],
         setup=_spk_copy(_nan_in("model.layers.0.attn_norm.weight", True)),
         culprit=("model.layers.0.attn_norm.weight", "weights"), error=E.NonFiniteError),
    Case("nan-logits-in-greedy-generation", "error",
         ["generate", "{s}", "--prompt", "RO", "--max-new-tokens", "3", "--temperature", "0"],
         setup=_src_copy(_nan_in("model.norm.weight", False)), culprit=("logits", "activations"),
         error=E.NonFiniteError),
    # ------------------------------------------------------------------ files and the OS
    Case("info-gguf-without-magic", "error", ["info", "{f}"], setup=_file("m.gguf", b"\x00" * 64),
         culprit=("{f}", "not a GGUF file"), error=E.CheckpointError),
    Case("text-is-a-device", "error", ["simulate", "{spk}", "--text", "/dev/zero", S],
         culprit=("/dev/zero", "not a regular file"), error=E.InputError),
    Case("text-not-utf8", "error", ["simulate", "{spk}", "--text", "{f}", S],
         setup=_file("bad.txt", b"ROMEO \xff\xfe"), culprit=("{f}", "UTF-8", "byte 6"),
         error=E.InputError),
    Case("text-jsonl-bad-line", "error", ["simulate", "{spk}", "--text", "{f}", S],
         setup=_jsonl_bad_line, culprit=("{f}:2",), error=E.InputError),
    Case("text-empty-directory", "error", ["simulate", "{spk}", "--text", "{tmp}", S],
         culprit=("{tmp}", "no .txt files"), error=E.InputError),
    Case("prompt-file-is-a-directory", "error", ["generate", "{src}", "--prompt-file", "{tmp}"],
         culprit=("{tmp}", "is a directory"), error=E.InputError),
    Case("prompt-file-unreadable", "error", ["generate", "{src}", "--prompt-file", "{f}"],
         setup=_unreadable, culprit=("{f}", "permission denied"), error=E.PathPermissionError,
         user=True),
    Case("eval-not-utf8", "error", ["convert", "{src}", "{tmp}/out", "--eval", "{f}", S],
         setup=_file("eval.txt", b"\xc3\x28"), culprit=("{f}", "UTF-8"), error=E.InputError,
         outputs=("{tmp}/out",)),
    Case("eval-missing", "error", ["convert", "{src}", "{tmp}/out", "--eval", "{tmp}/none.txt", S],
         culprit=("{tmp}/none.txt", "no such file"), error=E.MissingPathError, outputs=("{tmp}/out",)),
    Case("calib-renamed-eval", "error", ["convert", "{src}", "{tmp}/out", "--calib", "{f}", S],
         setup=_file("calib.txt", b"text"), culprit=("--calib", "--eval"), error=E.OptionError,
         outputs=("{tmp}/out",)),
    Case("calibrate-missing", "error", ["convert", "{src}", "{tmp}/out", "--calibrate",
                                        "{tmp}/none.txt", S],
         culprit=("{tmp}/none.txt",), error=FileNotFoundError, outputs=("{tmp}/out",)),
    Case("calibrate-not-utf8", "error", ["convert", "{src}", "{tmp}/out", "--calibrate", "{f}", S],
         setup=_file("cal.txt", b"\xc3\x28"), culprit=("{f}", "UTF-8"), error=ValueError,
         outputs=("{tmp}/out",)),
    Case("spike-budget-without-calibrate", "error", ["convert", "{src}", "{tmp}/out",
                                                     "--spike-budget", "1.0", S],
         culprit=("--spike-budget", "--calibrate"), error=E.OptionError, outputs=("{tmp}/out",)),
    Case("spike-budget-not-a-number", "error", ["convert", "{src}", "{tmp}/out", "--calibrate",
                                                "{f}", "--spike-budget", "fast", S],
         setup=_file("cal.txt", b"some calibration text " * 20), culprit=("'fast'", "spike budget"),
         error=E.OptionError, outputs=("{tmp}/out",)),
    Case("checkpoint-is-a-link-loop", "error", ["convert", "{l}", "{tmp}/out", S], setup=_loop,
         culprit=("{l}", "symbolic link loop"), error=E.CheckpointError, outputs=("{tmp}/out",)),
    Case("checkpoint-missing", "error", ["convert", "{tmp}/nowhere", "{tmp}/out", S],
         culprit=("{tmp}/nowhere", "no such file or directory"), error=E.CheckpointError,
         outputs=("{tmp}/out",)),
    Case("convert-into-a-read-only-directory", "error", ["convert", "{s}", "{od}/ro/out", S],
         setup=_readonly_parent, culprit=("{od}/ro", "permission denied"),
         error=E.PathPermissionError, outputs=("{od}/ro/out",), user=True),
    Case("convert-under-a-file", "error", ["convert", "{src}", "{f}/sub/out", S],
         setup=_file("plain.txt", "x"), culprit=("{f}", "not a directory"),
         error=E.PathNotDirectoryError),
    Case("report-missing-recording", "error", ["report", "{tmp}/none.h5", "--out", "{tmp}/rep"],
         culprit=("{tmp}/none.h5", "no such recording"), error=E.MissingPathError,
         outputs=("{tmp}/rep",)),
    Case("report-not-a-recording", "error", ["report", "{src}/config.json", "--out", "{tmp}/rep"],
         culprit=("{src}/config.json", "not an sbsnn recording"), error=E.RecordingError,
         outputs=("{tmp}/rep",)),
    Case("report-damaged-chunk", "error", ["report", "{f}", "--out", "{tmp}/rep"], setup=_bad_hdf5,
         culprit=("{f}", "damaged"), error=E.RecordingError, outputs=("{tmp}/rep",)),
    Case("report-truncated-recording", "error", ["report", "{f}", "--out", "{tmp}/rep"],
         setup=_truncated_hdf5, culprit=("{f}",), error=E.RecordingError, outputs=("{tmp}/rep",)),
    Case("report-fidelity-not-json", "error",
         ["report", "{rec}", "--out", "{tmp}/rep", "--fidelity", "{f}"], setup=_file("f.json", "{x"),
         culprit=("{f}", "not valid JSON"), error=E.InputError, outputs=("{tmp}/rep",)),
    Case("report-fidelity-out-of-range", "error",
         ["report", "{rec}", "--out", "{tmp}/rep", "--fidelity", "{f}"], setup=_bad_fidelity,
         culprit=("top1_agreement", "2.0"), error=E.InputError, outputs=("{tmp}/rep",)),
    Case("report-profile-unknown", "error", ["report", "{rec}", "--out", "{tmp}/rep", "--profile", "x"],
         culprit=("x", "profile"), error=E.InputError, outputs=("{tmp}/rep",)),
    # ------------------------------------------------------------------ the Python API
    Case("api-simulate-block-size", "error",
         api=lambda c: sbsnn.simulate(load_spiking(c["spk"]), PROMPT, block_size=-5,
                                      record=c["tmp"] / "x.h5"),
         culprit=("block_size", "-5"), error=E.OptionError, outputs=("{tmp}/x.h5",)),
    Case("api-simulate-max-tokens", "error",
         api=lambda c: sbsnn.simulate(load_spiking(c["spk"]), PROMPT, max_tokens=-2),
         culprit=("max_tokens", "-2"), error=E.OptionError),
    Case("api-simulate-token-outside-vocabulary", "error",
         api=lambda c: sbsnn.simulate(load_spiking(c["spk"]), [1, 2, 300]),
         culprit=("300", "vocabulary"), error=E.OptionError),
    Case("api-simulate-float-model", "error",
         api=lambda c: sbsnn.simulate(sbsnn.load_model(c["src"]), PROMPT),
         culprit=("no SpikingLinear", "convert"), error=E.CheckpointKindError),
    Case("api-load-model-of-a-spiking-checkpoint", "error",
         api=lambda c: sbsnn.load_model(c["spk"]), culprit=("{spk}", "spiking checkpoint"),
         error=E.CheckpointKindError),
    Case("api-load-spiking-of-a-float-checkpoint", "error",
         api=lambda c: sbsnn.load_spiking(c["src"]), culprit=("{src}", "float checkpoint"),
         error=E.CheckpointKindError),
    Case("api-convert-twice", "error",
         api=lambda c: sbsnn.convert(load_spiking(c["spk"])), culprit=("already spiking",),
         error=E.CheckpointKindError),
    Case("api-convert-k-absurd", "bound",
         api=lambda c: sbsnn.convert(sbsnn.load_model(c["src"]), k=1e9),
         culprit=("k=1e+09", "bound"), error=E.LimitError),
    Case("api-report-window", "error",
         api=lambda c: sbsnn.analysis.report.build_report(c["rec"], c["tmp"] / "rep", window=0),
         culprit=("window", "0"), error=E.OptionError, outputs=("{tmp}/rep",)),
    Case("api-sparsity-window", "error",
         api=lambda c: sbsnn.analysis.sparsity_from_recording(sbsnn.load_recording(c["rec"]), window=0),
         culprit=("window",), error=E.OptionError),
    Case("api-generate-top-k", "error",
         api=lambda c: list(sbsnn.load_model(c["src"]).stream("RO", 3, top_k=0)),
         culprit=("top_k", "0"), error=E.OptionError),
    Case("api-save-spiking-of-a-float-model", "error",
         api=lambda c: sbsnn.save_spiking(sbsnn.load_model(c["src"]), c["tmp"] / "out"),
         culprit=("float model",), error=E.CheckpointKindError, outputs=("{tmp}/out",)),
    Case("api-convert-targets-as-a-string", "error",
         api=lambda c: sbsnn.convert(sbsnn.load_model(c["src"]), targets="*.q_proj"),
         culprit=("targets", "list of glob patterns", "['*.q_proj']"), error=E.OptionError),
    Case("api-load-model-dtype-as-a-string", "error",
         api=lambda c: sbsnn.load_model(c["src"], dtype="float32"), culprit=("dtype", "'float32'"),
         error=E.OptionError),
    Case("api-load-recording-missing", "error",
         api=lambda c: sbsnn.load_recording(c["tmp"] / "none.h5"), culprit=("{tmp}/none.h5",),
         error=E.MissingPathError),
]



def _fill(x, ctx: dict):
    if isinstance(x, (str, Path)):
        return str(x).format(**{k: v for k, v in ctx.items() if isinstance(v, (str, Path))})
    return x


def test_the_table_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert sum(c.argv is not None for c in CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, base, tmp_path, monkeypatch, capsys):
    ctx = {"src": base.src, "spk": base.spk, "rec": base.rec, "tmp": tmp_path, "base": base}
    if case.setup is not None:
        ctx.update(case.setup(tmp_path, base) or {})
    caught: list[BaseException] = []
    real = cli.report_error

    def spy(command, e, where=""):
        caught.append(e)
        return real(command, e, where)

    monkeypatch.setattr(cli, "report_error", spy)
    capsys.readouterr()
    try:
        with unprivileged() if case.user else contextlib.nullcontext():
            if case.argv is not None:
                try:
                    rc = cli.main([_fill(a, ctx) for a in case.argv])
                except SystemExit as e:          # argparse
                    rc = e.code
                exc = caught[0] if caught else None
            else:
                rc, exc = 0, None
                try:
                    case.api(ctx)
                except Exception as e:  # noqa: BLE001
                    rc, exc = 2, e
    finally:
        if "od" in ctx:
            for p in Path(ctx["od"]).rglob("*"):
                with contextlib.suppress(OSError):
                    p.chmod(0o700)
            shutil.rmtree(ctx["od"], ignore_errors=True)
    out, err = capsys.readouterr()
    culprits = [_fill(c, ctx) for c in case.culprit]
    if case.outcome == "ok":
        assert rc == 0, f"exit {rc}; stderr {err!r}"
        if case.check is not None:
            case.check(ctx, out, err)
    else:
        assert rc == 2, f"exit {rc}; stderr {err!r}; exception {exc!r}"
        msg = str(exc) if case.argv is None else err
        if case.argv is not None:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1 and "error: " in lines[0], err
            assert "Traceback" not in err
        for c in culprits:
            assert c in msg, f"{c!r} not named in {msg!r}"
        if case.outcome == "bound":
            assert "bound" in msg
        if case.error is not None:
            assert isinstance(exc, case.error), f"{type(exc).__name__}: {exc}"
            assert isinstance(exc, E.SbsnnError)
    for p in case.outputs:
        p = Path(_fill(p, ctx))
        assert not looks_complete(p), f"{p} looks complete"
        assert not list(p.parent.glob(f".{p.name}.partial-*")) if p.parent.exists() else True
    for what in case.untouched:
        assert digest_tree(getattr(base, what)) == base.digests[what], f"{what} changed"
    assert hashlib.sha256(base.rec.read_bytes()).hexdigest() == base.rec_digest


def test_outcome_counts():
    """The table covers every outcome class with at least 60 cases; each case's own test
    (test_hostile) holds it to its declared outcome. Self-contained: it reads the
    table, not what other tests left behind, so it passes or fails alone and in any order
    (run with -s to see the counts)."""
    names = {"error": "clear error (exit 2)", "bound": "refused with its bound (exit 2)",
             "ok": "correct result (exit 0)"}
    counts: dict[str, int] = {}
    for case in CASES:
        counts[names[case.outcome]] = counts.get(names[case.outcome], 0) + 1
    print("\nhostile cases by outcome:", json.dumps(counts, indent=1))
    assert sum(counts.values()) == len(CASES) >= 60
    assert set(counts) == set(names.values())
    assert len({c.id for c in CASES}) == len(CASES)       # each case reported under its own id


# ============================================================================ disk full (in process)
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_conversion_leaves_nothing(base, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    real = safetensors.torch.save_file
    written = []

    def fill_up(tensors, filename, metadata=None):
        if written:                      # the first shard fits, the second does not
            Path(filename).write_bytes(b"\0" * 100)
            _enospc()
        written.append(filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fill_up)
    rc = cli.main(["convert", str(base.src), str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "no space left on the device" in err and "model-00002-of-00003.safetensors" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []     # no output, no partial


def test_disk_full_while_writing_a_report_keeps_the_old_one(base, tmp_path, monkeypatch, capsys):
    from sbsnn.analysis import plots

    out = tmp_path / "rep"
    assert cli.main(["report", str(base.rec), "--out", str(out)]) == 0
    before = (out / "report.json").read_bytes()
    monkeypatch.setattr(plots, "plot_energy", lambda *a, **k: _enospc())
    capsys.readouterr()
    assert cli.main(["report", str(base.rec), "--out", str(out), "--window", "4"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and err.count("\n") == 1
    assert (out / "report.json").read_bytes() == before      # the old report, whole
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ============================================================================ the umask
def test_umask_is_read_without_changing_it():
    from sbsnn.fsutil import _umask_by_probe, _umask_from_proc, current_umask

    m = os.umask(0o022)
    os.umask(m)
    assert current_umask() == m == _umask_by_probe()
    if Path("/proc/self/status").exists():
        assert _umask_from_proc() == m


UMASK_SCRIPT = """
import os, sys, stat
os.umask(0o027)
from sbsnn.cli import main
src, work = sys.argv[1], sys.argv[2]
assert main(["convert", src, work + "/spk", "--quiet"]) == 0
assert main(["simulate", work + "/spk", "--prompt", "ROMEO: hi", "--record", work + "/r.h5", "--quiet"]) == 0
assert main(["report", work + "/r.h5", "--out", work + "/rep"]) == 0
import sbsnn
sbsnn.save_spiking(sbsnn.convert(sbsnn.load_model(src)), work + "/mem")
for root, dirs, files in os.walk(work):
    for n in dirs + files:
        p = os.path.join(root, n)
        print(oct(stat.S_IMODE(os.stat(p).st_mode)), "d" if n in dirs else "f", os.path.relpath(p, work))
"""


def test_outputs_get_the_users_umask(base, tmp_path):
    r = subprocess.run([PY, "-c", UMASK_SCRIPT, str(base.src), str(tmp_path)], capture_output=True,
                       text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    modes = [line.split(None, 2) for line in r.stdout.splitlines() if line.startswith("0o")]
    assert len(modes) > 15
    for mode, kind, path in modes:
        assert mode == ("0o750" if kind == "d" else "0o640"), (mode, path)


# ============================================================================ signals and kills
SLOW = """
import os, signal, sys, time
# A shell's background job starts with SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler: restore it, as a terminal's user has it.
signal.signal(signal.SIGINT, signal.default_int_handler)
which = sys.argv[1]
def pause():
    time.sleep(0.5)
if which == "convert":
    import sbsnn.converters.stream as m
    real = m._write
    def slow(*a, **k):
        n = real(*a, **k); print("STEP", flush=True); pause(); return n
    m._write = slow
elif which == "simulate":
    from sbsnn.sim.recorder import Recorder as m
    real = m.flush
    def slow(self):
        real(self); print("STEP", flush=True); pause()
    m.flush = slow
elif which == "report":
    from sbsnn.analysis import plots as m
    real = m.plot_energy
    def slow(*a, **k):
        r = real(*a, **k); print("STEP", flush=True); time.sleep(30); return r
    m.plot_energy = slow
from sbsnn.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_until(argv: list, steps: int, sig: int) -> tuple[int, str]:
    """Run ``python -c SLOW`` until it has printed ``steps`` STEP lines, then signal it."""
    p = subprocess.Popen([PY, "-c", SLOW, *map(str, argv)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    seen = 0
    deadline = time.monotonic() + 120
    while seen < steps:
        line = p.stdout.readline()
        assert line, f"ended early: rc {p.wait()}, stderr {p.stderr.read()}"
        seen += line.startswith("STEP")
        assert time.monotonic() < deadline
    p.send_signal(sig)
    rc = p.wait(timeout=60)
    return rc, p.stderr.read()


def test_interrupted_conversion_leaves_nothing(base, tmp_path):
    rc, err = run_until(["convert", "convert", base.src, tmp_path / "out", "--quiet"], 1, signal.SIGINT)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_conversion_is_cleaned_up_by_the_rerun(base, tmp_path, capsys):
    rc, _ = run_until(["convert", "convert", base.src, tmp_path / "out", "--quiet"], 1, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.partial-")     # no "out"
    assert cli.main(["convert", str(base.src), str(tmp_path / "out"), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert digest_tree(tmp_path / "out").keys() == base.digests["spk"].keys()


def test_terminated_simulation_leaves_an_incomplete_recording(base, tmp_path):
    rec = tmp_path / "r.h5"
    rc, err = run_until(["simulate", "simulate", base.spk, "--prompt", PROMPT * 4, "--block-size", "8",
                         "--record", rec, "--quiet"], 2, signal.SIGTERM)
    assert rc == 143 and "terminated" in err and "Traceback" not in err
    assert rec.exists() and not looks_complete(rec)
    from sbsnn.sim import open_recording

    r = open_recording(rec, warn=False)
    assert not r.complete and r.layers and "incomplete" in r.notes[0]
    r.close()
    # a report of it says so, and the rerun replaces it with a complete one
    report = sbsnn.analysis.report.build_report(rec, tmp_path / "rep")
    assert report["metadata"]["recording_complete"] is False
    assert "INCOMPLETE" in report["notes"][0]
    assert cli.main(["simulate", str(base.spk), "--prompt", PROMPT, "--record", str(rec), "--quiet"]) == 0
    assert looks_complete(rec)


def test_a_killed_report_is_cleaned_up_by_the_rerun(base, tmp_path):
    out = tmp_path / "rep"
    rc, _ = run_until(["report", "report", base.rec, "--out", out], 1, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not (out / "report.json").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".sbsnn.partial-")]
    assert cli.main(["report", str(base.rec), "--out", str(out)]) == 0
    assert (out / "report.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


FSIZE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)         # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
from sbsnn.cli import main
print("convert", main(["convert", sys.argv[1], sys.argv[3] + "/out", "--quiet"]), flush=True)
print("simulate", main(["simulate", sys.argv[2], "--prompt", "ROMEO: hi " * 300, "--record",
                        sys.argv[3] + "/r.h5", "--quiet"]), flush=True)
"""


def test_a_write_limit_is_a_clear_error_and_leaves_nothing_complete(base, tmp_path):
    r = subprocess.run([PY, "-c", FSIZE, str(base.src), str(base.spk), str(tmp_path)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.stdout.split() == ["convert", "2", "simulate", "2"], (r.stdout, r.stderr)
    errs = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(errs) == 2 and "Traceback" not in r.stderr, r.stderr
    assert "sbsnn convert: error:" in errs[0] and ".safetensors" in errs[0] and "too large" in errs[0]
    assert "sbsnn simulate: error:" in errs[1] and "r.h5" in errs[1] and "too large" in errs[1]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    assert not looks_complete(tmp_path / "r.h5")


# ============================================================================ hypothesis
_DTYPES = ["F32", "F16", "BF16", "I8", "I64", "U8", "F8_E4M3", "U16", "F64"]
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 2 ** 65) | st.floats(allow_nan=False)
                     | st.text(max_size=4),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                     max_leaves=6)


@st.composite
def safetensors_files(draw) -> bytes:
    """A valid file, then zero to three corruptions of its header or data."""
    from sbsnn.models.checkpoint import FORMAT_DTYPE_BITS

    header: dict = {}
    off = 0
    for i in range(draw(st.integers(0, 4))):
        dt = draw(st.sampled_from(_DTYPES))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        n = FORMAT_DTYPE_BITS[dt] // 8
        for d in shape:
            n *= d
        header[f"t{i}"] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    if draw(st.booleans()):
        header["__metadata__"] = {"format": "pt"}
    data = bytes(draw(st.integers(0, 1)) for _ in range(off))   # 0/1 bytes: valid bools too
    names = [k for k in header if k != "__metadata__"]
    raw = None
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["offset", "shape", "dtype", "value", "trailing", "cut",
                                     "metadata", "dup", "garbage", "drop"]))
        if kind in ("offset", "shape", "dtype", "value", "dup", "drop") and not names:
            continue
        name = draw(st.sampled_from(names)) if names else None
        if kind == "offset":
            offs = header[name].get("data_offsets") if isinstance(header[name], dict) else None
            if isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs):
                offs[draw(st.integers(0, 1))] += draw(st.integers(-9, 9))
        elif kind == "shape" and isinstance(header[name], dict):
            header[name]["shape"] = draw(st.lists(st.integers(0, 4), max_size=3))
        elif kind == "dtype" and isinstance(header[name], dict):
            header[name]["dtype"] = draw(st.sampled_from(_DTYPES + ["f32", "F33", ""]))
        elif kind == "value" and isinstance(header[name], dict):
            header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(_JSON)
        elif kind == "trailing":
            data += b"\0" * draw(st.integers(1, 9))
        elif kind == "cut":
            data = data[: max(0, len(data) - draw(st.integers(1, 9)))]
        elif kind == "metadata":
            header["__metadata__"] = draw(_JSON)
        elif kind == "drop":
            del header[name]
            names.remove(name)
        elif kind == "dup":
            body = json.dumps(header)
            raw = (body[:-1] + (", " if len(body) > 2 else "") + json.dumps(name) + ": "
                   + json.dumps(header[name]) + "}").encode()
        elif kind == "garbage":
            raw = draw(st.binary(max_size=24))
    hb = raw if raw is not None else json.dumps(header).encode()
    n = len(hb)
    if draw(st.integers(0, 9)) == 0:
        n = draw(st.integers(0, 2 ** 64 - 1))
    return n.to_bytes(8, "little") + hb + data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(safetensors_files())
def test_corrupt_safetensors_are_refused_as_the_library_refuses_them(blob):
    """Whatever the ``safetensors`` library rejects, sbsnn rejects naming the file; what it
    accepts, sbsnn reads to the same bytes (or refuses by name for a dtype sbsnn does not
    compute with, or a tensor listed twice)."""
    import safetensors.torch

    from sbsnn.models.checkpoint import read_safetensors

    try:
        ref = safetensors.torch.load(blob)
    except Exception:  # noqa: BLE001 - the library's verdict
        ref = None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        path.write_bytes(blob)
        try:
            ours = read_safetensors(path)
        except E.SafetensorsError as e:
            assert str(path) in str(e)
            if ref is not None:
                assert "sbsnn does not read" in str(e) or "listed twice" in str(e), str(e)
            return
        assert ref is not None, "sbsnn read a file the safetensors library rejects"
        assert sorted(ours) == sorted(ref)
        for k, t in ours.items():
            assert t.dtype == ref[k].dtype and t.shape == ref[k].shape
            assert torch.equal(t.reshape(-1).view(torch.uint8), ref[k].reshape(-1).view(torch.uint8))


def _valid_config() -> dict:
    return HybridConfig(**TINY).to_dict()


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "attn_layers", "sliding_window",
             "norm_eps", "attention_bias", "rope_theta")


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(_valid_config()) + ["some_new_key"]),
       value=st.one_of(st.just("<delete>"), _JSON))
def test_corrupt_configs_are_refused_by_name_or_read_as_given(key, value):
    """A config with one key deleted or set to any JSON value either loads with that very
    value (and builds a model), or is refused with a ConfigError naming the file; a key a
    trained model depends on is never defaulted."""
    d = _valid_config()
    if value == "<delete>":
        d.pop(key, None)
    else:
        d[key] = value
    try:
        cfg = HybridConfig.from_dict(d, source="cfg.json")
    except E.CheckpointError as e:
        assert "cfg.json" in str(e)
        if value == "<delete>" and key in _REQUIRED:
            assert key in str(e)
        return
    assert not (value == "<delete>" and key in _REQUIRED), f"{key} was defaulted"
    assert key != "some_new_key" or value == "<delete>", "an unknown key was accepted"
    if value != "<delete>" and key not in ("head_dim",):
        got = getattr(cfg, key)
        assert got == value and type(got) is type(value) or (
            isinstance(got, list) and got == list(value)), (key, value, got)
    # Build it (on meta: no memory) unless the value makes it absurdly large: the reader
    # accepts any positive layer count, and building 2**60 layers never ends.
    if all(getattr(cfg, n) <= 4096 for n in ("num_hidden_layers", "hidden_size",
                                             "intermediate_size", "num_attention_heads",
                                             "num_key_value_heads")):
        with torch.device("meta"):
            HybridForCausalLM(cfg)
