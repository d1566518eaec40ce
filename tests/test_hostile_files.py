"""Hostile inputs, second pass: the user's files.

- ``--force`` replaces only a spiking checkpoint sbsnn wrote, exactly as it wrote it
  (its digests are the manifest); a directory with any other file, a fake
  ``spiking_config.json``, a changed file or a checkpoint without digests is refused and
  left byte-identical;
- a file copied from the source into the output (config, tokenizer files) that is a link
  out of the checkpoint, or not a regular file, is refused: nothing from outside lands in
  the output or its digests;
- inputs that are not regular files (a FIFO as weights, config, tokenizer, GGUF,
  recording, profile, JSON option) are refused by name instead of blocking forever; text
  inputs may be pipes;
- options that would run without end are bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sbsnn.cli as cli
from sbsnn import errors as E
from sbsnn.converters import convert_checkpoint
from sbsnn.models import HybridConfig, HybridForCausalLM, save_pretrained

REPO = Path(__file__).resolve().parent.parent
TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1], sliding_window=8,
            rope_theta=10000.0, gate_low_rank_dim=8)


def tree(d: Path) -> dict[str, str]:
    """Every entry below ``d`` (files by content, links by target, others by kind)."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir" if p.is_dir() else "special"
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    src = root / "src"
    save_pretrained(HybridForCausalLM(HybridConfig(**TINY)).eval(), src)
    spk = root / "spk"
    convert_checkpoint(src, spk, progress=False)
    return src, spk


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


# ------------------------------------------------------------------- --force and its manifest
def test_force_refuses_a_folder_with_a_fake_spiking_config(tmp_path, ckpt, capsys):
    src, _ = ckpt
    out = tmp_path / "home"
    (out / ".ssh").mkdir(parents=True)
    (out / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (out / "thesis.tex").write_text("\\documentclass{article}\n")
    (out / "spiking_config.json").write_text("{}")
    before = tree(out)
    rc, err = run(["convert", src, out, "--force", "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "spiking_config.json" in err and str(out) in err
    assert tree(out) == before


@pytest.mark.parametrize("extra", ["notes.txt", "report/report.html", ".hidden", "sub/"])
def test_force_refuses_a_real_checkpoint_holding_a_users_files(tmp_path, ckpt, capsys, extra):
    src, spk = ckpt
    import shutil

    out = tmp_path / "spk"
    shutil.copytree(spk, out)
    p = out / extra
    if extra.endswith("/"):
        p.mkdir()
    else:
        p.parent.mkdir(exist_ok=True)
        p.write_text("mine\n")
    before = tree(out)
    rc, err = run(["convert", src, out, "--force", "--quiet"], capsys)
    assert rc == 2 and "did not write" in err and extra.split("/")[0] in err, err
    assert tree(out) == before


def test_force_refuses_a_changed_checkpoint_and_one_without_digests(tmp_path, ckpt, capsys):
    src, spk = ckpt
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(spk, changed)
    (changed / "config.json").write_text((changed / "config.json").read_text() + " ")
    before = tree(changed)
    rc, err = run(["convert", src, changed, "--force", "--quiet"], capsys)
    assert rc == 2 and "changed since sbsnn wrote it" in err and "config.json" in err, err
    assert tree(changed) == before

    bare = tmp_path / "bare"
    shutil.copytree(spk, bare)
    cfg = json.loads((bare / "spiking_config.json").read_text())
    cfg.pop("digests")
    (bare / "spiking_config.json").write_text(json.dumps(cfg))
    before = tree(bare)
    rc, err = run(["convert", src, bare, "--force", "--quiet"], capsys)
    assert rc == 2 and "no digests" in err, err
    assert tree(bare) == before


def test_force_replaces_a_checkpoint_exactly_as_sbsnn_wrote_it(tmp_path, ckpt, capsys):
    src, spk = ckpt
    import shutil

    out = tmp_path / "spk"
    shutil.copytree(spk, out)
    rc, err = run(["convert", src, out, "--force", "--quiet", "--k", "2.5"], capsys)
    assert rc == 0, err
    assert json.loads((out / "spiking_config.json").read_text())["k"] == 2.5


# ------------------------------------------------------------------- files copied into outputs
def test_a_tokenizer_file_linked_out_of_the_checkpoint_is_refused(tmp_path, ckpt, capsys):
    src, _ = ckpt
    import shutil

    mine = tmp_path / "src"
    shutil.copytree(src, mine)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"aws_secret_access_key": "hunter2"}))
    (mine / "special_tokens_map.json").symlink_to(secret)
    before = tree(mine), secret.read_bytes()
    out = tmp_path / "out"
    rc, err = run(["convert", mine, out, "--quiet"], capsys)
    assert rc == 2 and "special_tokens_map.json" in err and "outside the checkpoint" in err, err
    assert not out.exists() and not any(tmp_path.glob(".out.partial-*"))
    assert (tree(mine), secret.read_bytes()) == before


def test_links_inside_a_hugging_face_cache_snapshot_are_followed(tmp_path, ckpt, capsys):
    """The hub's cache keeps files in blobs/ and links them from snapshots/<rev>/."""
    src, _ = ckpt
    repo = tmp_path / "models--me--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    rc, err = run(["convert", snap, tmp_path / "out", "--quiet"], capsys)
    assert rc == 0, err
    assert (tmp_path / "out" / "config.json").read_bytes() == (src / "config.json").read_bytes()


# ------------------------------------------------------------------- inputs that are not files
def _fifo(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        p.unlink()
    os.mkfifo(p)
    return p


FIFO_CASES = {
    "weights": (lambda src, spk, t: (_fifo(src / "model.safetensors"),     # info reads no weights
                                     ["convert", src, t / "o", "--quiet"])),
    "config": (lambda src, spk, t: (_fifo(src / "config.json"), ["info", src])),
    "tokenizer": (lambda src, spk, t: (_fifo(spk / "tokenizer.json"),
                                       ["simulate", spk, "--prompt", "hi", "--quiet"])),
    "spiking-config": (lambda src, spk, t: (_fifo(spk / "spiking_config.json"),
                                            ["simulate", spk, "--prompt", "hi", "--quiet"])),
    "gguf": (lambda src, spk, t: (_fifo(t / "m.gguf"), ["info", t / "m.gguf"])),
    "recording": (lambda src, spk, t: (_fifo(t / "r.h5"), ["report", t / "r.h5", "--out", t / "rep"])),
    "profile": (lambda src, spk, t: (_fifo(t / "p.json"),
                                     ["sweep", src, "--k", "3", "--out", t / "sw", "--profile",
                                      t / "p.json", "--quiet"])),
}


@pytest.mark.parametrize("what", sorted(FIFO_CASES))
def test_a_fifo_as_an_input_is_refused_not_waited_for(tmp_path, ckpt, what):
    """Each command runs in a child with a deadline: a hang fails the test, not the suite."""
    import shutil

    src, spk = tmp_path / "src", tmp_path / "spk"
    shutil.copytree(ckpt[0], src)
    shutil.copytree(ckpt[1], spk)
    fifo, *commands = FIFO_CASES[what](src, spk, tmp_path)
    for argv in commands:
        try:
            r = subprocess.run([sys.executable, "-m", "sbsnn", *map(str, argv)], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
        except subprocess.TimeoutExpired:
            pytest.fail(f"{argv[0]} waited on the FIFO {fifo}")
        assert r.returncode == 2, (argv, r.stderr)
        assert fifo.name in r.stderr and ("pipe" in r.stderr or "FIFO" in r.stderr), r.stderr


def test_a_text_input_may_be_a_pipe(tmp_path, ckpt):
    _, spk = ckpt
    fifo = _fifo(tmp_path / "text")
    p = subprocess.Popen([sys.executable, "-m", "sbsnn", "simulate", str(spk), "--text",
                          str(fifo), "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    with open(fifo, "w") as f:
        f.write("a text that came through a pipe")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "simulated 31 tokens" in out


def test_check_input_file_names_what_the_path_is(tmp_path):
    from sbsnn.checks import check_input_file

    fifo = _fifo(tmp_path / "f")
    with pytest.raises(E.InputError, match=r"f: a named pipe \(FIFO\), not a regular file"):
        check_input_file(fifo, "the weights")
    assert check_input_file(fifo, "a text", pipes_ok=True) == fifo
    with pytest.raises(E.InputError, match="a device"):
        check_input_file("/dev/zero", "the weights")
    with pytest.raises(E.InputError, match="is a directory"):
        check_input_file(tmp_path, "the weights")
    with pytest.raises(E.MissingPathError):
        check_input_file(tmp_path / "nope", "the weights")


# ------------------------------------------------------------------- options without end
@pytest.mark.parametrize("argv, culprit", [
    (["generate", "tiny-hybrid", "--prompt", "hi", "--max-new-tokens", str(10**12)],
     "--max-new-tokens"),
    (["convert", "tiny-hybrid", "OUT", "--calibrate", "TEXT", "--refine-epochs", str(10**12),
      "--quiet"], "--refine-epochs"),
])
def test_options_that_would_run_without_end_are_bounded(tmp_path, capsys, argv, culprit):
    (tmp_path / "t.txt").write_text("some calibration text " * 20)
    argv = [str(tmp_path / "o") if a == "OUT" else str(tmp_path / "t.txt") if a == "TEXT" else a
            for a in argv]
    rc, err = run(argv, capsys)
    assert rc == 2 and culprit in err and "the bound is" in err, err


# ------------------------------------------------------------------- other outputs
def _recording(tmp_path: Path, spk: Path) -> Path:
    rec = tmp_path / "r.h5"
    assert cli.main(["simulate", str(spk), "--prompt", "a few words", "--record", str(rec),
                     "--quiet"]) == 0
    return rec


@pytest.mark.parametrize("mine", ["report.html", "report.json", "energy.png"])
def test_a_report_never_replaces_a_users_file_of_the_same_name(tmp_path, ckpt, capsys, mine):
    rec = _recording(tmp_path, ckpt[1])
    out = tmp_path / "rep"
    out.mkdir()
    (out / mine).write_text("the user's own file\n")
    before = tree(out)
    rc, err = run(["report", rec, "--out", out], capsys)
    assert rc == 2 and mine in err and "did not write" in err, err
    assert tree(out) == before


def test_a_report_replaces_its_own_files_again_and_again(tmp_path, ckpt, capsys):
    rec = _recording(tmp_path, ckpt[1])
    out = tmp_path / "rep"
    for _ in range(2):
        rc, err = run(["report", rec, "--out", out], capsys)
        assert rc == 0, err
    owned = json.loads((out / "sbsnn-outputs.json").read_text())
    assert {"report.json", "report.html"} <= set(owned)
    (out / "report.html").write_text("edited by hand\n")       # changed since: the user's now
    rc, err = run(["report", rec, "--out", out], capsys)
    assert rc == 2 and "report.html" in err and "changed since" in err, err
    assert (out / "report.html").read_text() == "edited by hand\n"
