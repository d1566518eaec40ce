"""``sbsnn finetune`` on the command line, in one process and under torchrun (two CPU
processes over gloo on 127.0.0.1): the same global batches give the same weights, to
float rounding; the output is an ordinary spiking checkpoint with its record; a rerun
with the same options continues from the state file; bad options are refused by name.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_torchrun import _ok, run_cli

import sbsnn
from sbsnn.cli import main
from sbsnn.data import heldout_text

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(),
                                 reason="this torch has no torch.distributed")]

OPTIONS = ["--train", "norms", "codes", "--lr", "1e-2", "--batch", "4", "--block-size", "128",
           "--positions", "32", "--eval-every", "2", "--eval-windows", "2", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("finetune")
    from sbsnn.converters import convert_checkpoint

    convert_checkpoint("tiny-hybrid", d / "ck", k=1.0, progress=False)
    t = heldout_text()
    (d / "train.txt").write_text(t[:4500])
    (d / "held.txt").write_text(t[4500:])
    return d


def _args(work, out, steps: int, *extra) -> list:
    return ["finetune", work / "ck", out, "--float", "tiny-hybrid", "--text", work / "train.txt",
            "--eval", work / "held.txt", "--eval-tokens", "600", "--steps", str(steps),
            *OPTIONS, *extra]


def test_two_gloo_processes_give_the_weights_of_one(work, capsys):
    assert main(list(map(str, _args(work, work / "one", 3)))) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned" in printed and "held-out KL" in printed and "fine-tuned " in printed
    r = run_cli(_args(work, work / "two", 3), nproc=2)
    _ok(r)
    assert "2 processes" in r.stdout
    one, two = sbsnn.load_spiking(work / "one"), sbsnn.load_spiking(work / "two")
    a, b = one.state_dict(), two.state_dict()
    assert set(a) == set(b)
    plain = sbsnn.load_spiking(work / "ck").state_dict()
    assert any(not torch.equal(a[n], plain[n]) for n in a if n.endswith("weight_codes"))
    for n in a:
        if a[n].is_floating_point():
            torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-7, msg=n)
        else:
            assert torch.equal(a[n], b[n]), n
    ra = json.loads((work / "one" / "finetune.json").read_text())
    rb = json.loads((work / "two" / "finetune.json").read_text())
    assert (ra["world_size"], rb["world_size"]) == (1, 2)
    for x, y in zip(ra["heldout_kl"], rb["heldout_kl"]):
        assert x["step"] == y["step"] and x["kl"] == pytest.approx(y["kl"], rel=1e-5)
    assert one.spiking_config.finetune["steps"] == 3


def test_a_rerun_continues_from_its_state_and_bad_options_are_refused(work, capsys):
    out = work / "resumed"
    assert main(list(map(str, _args(work, out, 2)))) == 0
    assert (work / "resumed.finetune-state.pt").exists()
    assert main(list(map(str, _args(work, out, 3, "--force")))) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    assert json.loads((out / "finetune.json").read_text())["resumed_from_step"] == 2
    for bad, match in ((["--steps", "0"], "--steps must be an integer >= 1"),
                       (["--lr", "0"], "--lr must be a number > 0"),
                       (["--lr", "nan"], "--lr must be a finite number"),
                       (["--block-size", "9999"], "fewer than one block of 9,999")):
        assert main(list(map(str, _args(work, work / "bad", 2, *bad)))) == 2
        assert match in capsys.readouterr().err
    assert not (work / "bad").exists()
