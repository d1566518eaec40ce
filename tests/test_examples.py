"""Every script in examples/ (one per user job) runs on the embedded model with small sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sbsnn.models.checkpoint import EMBEDDED

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCRIPTS = ("convert_checkpoint.py", "simulate_spikes.py", "plot_reports.py")
HAVE_MODEL = (EMBEDDED["tiny-hybrid"] / "config.json").exists()
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="the embedded tiny-hybrid model is not built yet")


def run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_has_docstring_and_help(script, capsys):
    spec = importlib.util.spec_from_file_location(f"example_{script[:-3]}", EXAMPLES / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.__doc__ and len(mod.__doc__.strip()) > 200 and "Examples::" in mod.__doc__
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


@needs_model
def test_convert_then_simulate(tmp_path):
    out = run("convert_checkpoint.py", "--out", "spk", "--max-chars", "200", cwd=tmp_path)
    assert "32 spiking linear layers" in out and "top-1 agreement" in out
    cfg = json.loads((tmp_path / "spk" / "spiking_config.json").read_text())
    assert cfg["k"] == 3.0 and cfg["coding"] == "ternary"
    out = run("simulate_spikes.py", "spk", "--max-tokens", "12", "--record", "run.h5", cwd=tmp_path)
    assert "simulated 12 tokens" in out and "spike events" in out
    assert "token 0 channel   0" in out and (tmp_path / "run.h5").is_file()


@needs_model
def test_plot_reports(tmp_path):
    out = run("plot_reports.py", "--out", "rep", "--max-tokens", "24", "--sweep", "--ks", "3",
                  cwd=tmp_path)
    rep = tmp_path / "rep"
    for f in ("report.json", "report.html", "sparsity_per_layer.png", "energy.png",
              "extra_window_sparsity.png", "extra_energy_truenorth.png", "sweep.png", "sweep.json"):
        assert (rep / f).is_file(), f
    assert "vs INT8" in out and "7B spars." in out
    assert json.loads((rep / "report.json").read_text())["metadata"]["tokens"] == 24
