"""``sbsnn convert``: options, errors, fidelity printout, and what a killed run leaves.

Runs that must behave like the real command line (kills, argparse, ``--eval``) use
``python -m sbsnn`` or ``sbsnn.cli.main`` in a subprocess; option and error checks that
need no separate process call ``sbsnn.cli.main`` in-process (torch imports once).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sbsnn
from sbsnn.cli import main
from sbsnn.converters import SpikingLinear, convert, load_spiking
from sbsnn.models import CheckpointError, HybridConfig, HybridForCausalLM, save_pretrained

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1, 3],
            sliding_window=8, rope_theta=10000.0, gate_low_rank_dim=8)
TEXT = ("ROMEO: But soft, what light through yonder window breaks?\n"
        "It is the east, and Juliet is the sun.\n") * 3
IDS = torch.tensor([[82, 79, 77, 69, 79, 58, 32, 66, 117, 116]])


@pytest.fixture(autouse=True)
def _keep_sigterm_and_threads():
    """main() installs a SIGTERM handler; restore pytest's afterwards."""
    handler = signal.getsignal(signal.SIGTERM)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    signal.signal(signal.SIGTERM, handler)
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "src"
    torch.manual_seed(0)
    model = HybridForCausalLM(HybridConfig(**TINY))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    save_pretrained(model, d)
    return d


def run_main(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        return e.code


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


# ============================================================================ options
def test_cli_w8aspike_with_options_and_calib(tmp_path, src):
    (tmp_path / "text.txt").write_text(TEXT)
    out = tmp_path / "out"
    r = subprocess.run([PY, "-m", "sbsnn", "convert", src, out, "--preset", "w8aspike", "--k", "2.5",
                        "--group-size", "64", "--eval", tmp_path / "text.txt", "--quiet"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    cfg = json.loads((out / "spiking_config.json").read_text())
    assert (cfg["preset"], cfg["k"], cfg["group_size"], cfg["coding"]) == ("w8aspike", 2.5, 64, "ternary")
    assert not any(t.endswith("down_proj") for t in cfg["targets"])
    assert cfg["attention_hooks"] == ["model.layers.1.attn", "model.layers.3.attn"]
    snn = load_spiking(out)
    assert all(m.group_size == 64 and m.k == 2.5 for _, m in snn.named_modules() if isinstance(m, SpikingLinear))
    mem = convert(sbsnn.load_model(src), "w8aspike", k=2.5, group_size=64)
    assert torch.equal(logits(snn), logits(mem))
    # the fidelity line: float and spiking perplexity, agreement and KL, the API's numbers
    m = re.search(r"\((\d+) predictions, 1 document\): perplexity float ([\d.]+), spiking ([\d.]+) "
                  r"\(x[\d.]+; recovery [\d.]+\); top-1 agreement ([\d.]+) %; mean KL ([\d.]+) nats",
                  r.stdout)
    assert m, r.stdout
    from sbsnn.analysis import fidelity

    f = fidelity(sbsnn.load_model(src), snn, TEXT)
    assert int(m.group(1)) == f.tokens == len(TEXT) - 1
    assert m.group(2) == f"{f.float_perplexity:.3f}" and m.group(3) == f"{f.spiking_perplexity:.3f}"
    assert m.group(4) == f"{100 * f.top1_agreement:.1f}" and m.group(5) == f"{f.mean_kl:.4f}"


@pytest.mark.parametrize("args,message", [
    (["--preset", "spiky"], "invalid choice: 'spiky'"),
    (["--coding", "unary"], "invalid choice: 'unary'"),
    (["--k", "three"], "invalid float value: 'three'"),
    (["--group-size", "1.5"], "invalid int value: '1.5'"),
], ids=["preset", "coding", "k", "group-size"])
def test_cli_bad_choices_are_argparse_errors(tmp_path, src, args, message):
    r = subprocess.run([PY, "-m", "sbsnn", "convert", src, tmp_path / "out", *args],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--k", "-1"], "k must be"),
    (["--k", "0"], "k must be"),
    (["--k", "nan"], "k must be"),
    (["--k", "inf"], "k must be"),  # a checkpoint with k=inf cannot run: V_th would be 0
    (["--group-size", "0"], "--group-size"),
    (["--targets", "*.nothing"], "*.nothing"),
], ids=["k=-1", "k=0", "k=nan", "k=inf", "group-size=0", "unmatched-target"])
def test_cli_bad_values_are_clear_errors(tmp_path, src, capsys, args, message):
    out = tmp_path / "out"
    rc = run_main(["convert", src, out, "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2, f"exit code {rc}; stderr: {err!r}"
    assert err.startswith("sbsnn convert: error:") and message in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_cli_missing_source_is_a_clear_error(tmp_path, capsys):
    rc = run_main(["convert", tmp_path / "nowhere", tmp_path / "out", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "config.json" in err and str(tmp_path / "nowhere") in err


def test_cli_refuses_existing_output_without_force_and_replaces_with_force(tmp_path, src, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_main(["convert", src, out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "mine" and not (out / "spiking_config.json").exists()
    # --force replaces a spiking checkpoint only, never a directory of other files
    assert run_main(["convert", src, out, "--quiet", "--force"]) == 2
    err = capsys.readouterr().err
    assert "not a spiking checkpoint" in err and "keep.txt" in err
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run_main(["convert", src, out, "--quiet", "--k", "2"]) == 2   # exists, even empty
    assert run_main(["convert", src, out, "--quiet", "--force", "--k", "2"]) == 0   # empty: replaced
    assert run_main(["convert", src, out, "--quiet", "--force"]) == 0    # a spiking one: replaced
    assert (out / "spiking_config.json").exists()
    assert json.loads((out / "spiking_config.json").read_text())["k"] == 3.0
    assert isinstance(load_spiking(out), HybridForCausalLM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .old / .partial left


# ============================================================================ kills
# Runs the real CLI entry point with each shard write slowed down, and prints a line per
# shard, so the test can kill it half-way through at a known point.
SLOW_CLI = """
import sys, time
import sbsnn.converters.stream as stream
real = stream._write
def slow(path, tensors, weight_map):
    n = real(path, tensors, weight_map)
    print("WROTE", path.name, flush=True)
    time.sleep(0.4)
    return n
stream._write = slow
from sbsnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_slow(src: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", SLOW_CLI, "convert", str(src), str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_shards(p: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 60
    seen = 0
    while seen < n:
        line = p.stdout.readline()
        assert line, f"converter ended early: rc {p.wait()}, stderr {p.stderr.read()}"
        seen += line.startswith("WROTE")
        assert time.monotonic() < deadline
    # 2 of 5 shards written; the third is being prepared or the process sleeps


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_conversion_leaves_no_complete_looking_output(tmp_path, src, sig):
    out = tmp_path / "out"
    p = start_slow(src, out)
    wait_for_shards(p, 2)
    p.send_signal(sig)
    rc = p.wait(timeout=30)
    leftovers = list(tmp_path.glob(".out.partial-*"))
    assert not out.exists()
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        # the temporary directory shows the run was killed half-way; it is no checkpoint
        assert len(leftovers) == 1
        assert not (leftovers[0] / "spiking_config.json").exists()
        assert 2 <= len(list(leftovers[0].glob("*.safetensors"))) < 5
        with pytest.raises(CheckpointError):
            load_spiking(leftovers[0])
    else:
        assert rc == 143, p.stderr.read()
        assert leftovers == []  # unwound and cleaned up
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".out.partial-")) == []


def test_killed_forced_conversion_keeps_the_old_output(tmp_path, src):
    out = tmp_path / "out"
    assert run_main(["convert", src, out, "--quiet", "--k", "2"]) == 0
    before = {q.name: q.read_bytes() for q in out.iterdir()}
    p = start_slow(src, out, "--force")
    wait_for_shards(p, 2)
    p.kill()
    p.wait(timeout=30)
    assert {q.name: q.read_bytes() for q in out.iterdir()} == before
    # a rerun removes what the killed run left and replaces the old output
    assert run_main(["convert", src, out, "--quiet", "--force"]) == 0
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / "spiking_config.json").read_text())["k"] == 3.0


def test_generate_and_info_take_a_spiking_checkpoint(src, tmp_path, capsys):
    """The seed's on-device use: a spiking model answering a prompt from the CLI."""
    out = tmp_path / "spk"
    assert main(["convert", str(src), str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    spiking = load_spiking(out)
    want = "".join(spiking.stream("ROMEO:", 5, temperature=0))
    assert printed.startswith("ROMEO:") and printed.rstrip("\n").endswith(want.rstrip("\n"))
    # --debug names the route that computed the group sums, and what rescaled them
    assert main(["generate", str(out), "--prompt", "R", "--max-new-tokens", "1", "--debug"]) == 0
    err = capsys.readouterr().err
    from sbsnn.converters.quant import route_description
    assert f"sbsnn generate: integer route (group sums): {route_description('cpu')}" in err
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    n = len(sbsnn.converters.spiking_layers(spiking))
    assert f"spiking checkpoint: {n} spiking linear layers (paper preset, ternary coding, k = 3" in text
