"""The ``sbsnn`` command: a thin face on the Python API (parse, call, print)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXAMPLES = """\
examples:
  sbsnn demo                         the main job on the embedded model
  sbsnn info tiny-hybrid             layers, parameters, state bytes
  sbsnn info path/to/checkpoint      (a directory holding config.json, or a .gguf file)
  sbsnn generate tiny-hybrid --prompt "ROMEO:" --max-new-tokens 200
  sbsnn convert tiny-hybrid spiking-tiny --preset paper --k 3 --eval text.txt
  sbsnn convert model.gguf spiking-cal --calibrate calib.txt --spike-budget k=3 --eval heldout.txt
  sbsnn finetune spiking-cal spiking-ft --float model.gguf --text train.txt --eval heldout.txt
  sbsnn report spikes.h5 --out report/    report.json, report.html and plots
  sbsnn sweep tiny-hybrid --k 2 3 4 --out sweep/
  sbsnn eval tiny-hybrid --spiking spiking-tiny --tasks sbsnn_cloze,sbsnn_heldout --out eval/
                                     lm-eval tasks, float and spiking side by side (offline;
                                     docs/evaluation.md: ARC, HellaSwag, MMLU, WikiText)
  sbsnn simulate spiking-tiny --text corpus.jsonl --record spikes.h5   (a document set)
  torchrun --nproc-per-node 4 -m sbsnn simulate spiking-tiny --text corpus.jsonl --record spikes.h5
                                     the same, documents split over 4 processes
                                     (docs/distributed.md: clusters, pipeline stages)
"""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _check_threads(args) -> int:
    from sbsnn.checks import THREADS_LIMIT, THREADS_WHY, check_int

    return check_int(args.threads, "--threads", minimum=0, maximum=THREADS_LIMIT, why=THREADS_WHY)


def _threads(args) -> None:
    """Apply --threads (0: torch's default); the command owns its process."""
    n = _check_threads(args)
    if n:
        import torch
        torch.set_num_threads(n)


def _check_out_dir(out, option: str = "--out") -> Path:
    """An output directory: it may exist, but as a directory."""
    from sbsnn.errors import PathNotDirectoryError

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise PathNotDirectoryError(f"{p}: {option} names a file; give a directory (it is "
                                    "created if missing)", filename=p)
    return p


def _check_apart(src, out, what_src: str, option: str = "--out", contain_ok: bool = False) -> None:
    """Refuse an output that is, lies inside, or (unless ``contain_ok``) contains the source."""
    from sbsnn.checks import overlap
    from sbsnn.errors import OptionError
    from sbsnn.models.checkpoint import resolve

    how = overlap(resolve(src), out)
    if how is not None and not (contain_ok and how == "a in b"):
        rel = {"same": "is", "b in a": "lies inside", "a in b": "contains"}[how]
        raise OptionError(f"{option} {out} {rel} the {what_src} {src}; write the output "
                          "somewhere else (the source must stay untouched)")


# Options several commands take, each declared once: name -> (flags, add_argument keywords).
_SHARED_OPTIONS = {
    "threads": (("--threads",), dict(type=int, default=0,
                                     help="torch threads (0: torch's default)")),
    "quiet": (("--quiet",), dict(action="store_true", help="no progress bar")),
    "allow_pickle": (("--allow-pickle",), dict(
        action="store_true",
        help="also read pickle weights (.bin/.pt), with torch.load(weights_only=True)")),
    "profile": (("--profile",), dict(
        default="horowitz45", help="energy profile of the spiking side: horowitz45, loihi2018, "
        "truenorth2014 or a JSON file (default: %(default)s)")),
    "preset": (("--preset",), dict(
        default="paper", choices=["paper", "w8aspike"],
        help="which layers to spike (default: %(default)s; see docs/spiking-checkpoint.md)")),
    "coding": (("--coding",), dict(
        default="ternary", choices=["binary", "ternary", "bitwise", "twos_complement"],
        help="how counts become time steps (default: %(default)s)")),
    "backend": (("--backend",), dict(
        default="auto", choices=["auto", "torch", "cupy"],
        help="auto: CuPy kernels when a GPU is usable, PyTorch otherwise")),
    "no_verify": (("--no-verify",), dict(
        action="store_true", help="a spiking checkpoint: skip the content digests of its files "
        "(faster on large models; weight codes and scales are still checked)")),
}


def _add(p: argparse.ArgumentParser, *names: str) -> None:
    """Add the shared options ``names`` (keys of ``_SHARED_OPTIONS``) to ``p``."""
    for name in names:
        flags, kw = _SHARED_OPTIONS[name]
        p.add_argument(*flags, **kw)


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="embedded model name (tiny-hybrid), checkpoint directory "
                                 "(config.json + *.safetensors), llama.cpp .gguf file, or "
                                 "spiking checkpoint (sbsnn convert's output)")
    _add(p, "allow_pickle")


def _spiking_config_of(path):
    """The SpikingConfig when ``path`` is a spiking checkpoint directory, else None."""
    from sbsnn.converters.format import SPIKING_CONFIG, read_spiking_config

    p = Path(path)
    return read_spiking_config(p) if p.is_dir() and (p / SPIKING_CONFIG).exists() else None


def cmd_info(args) -> int:
    from sbsnn.models.info import format_info, info_from_path

    print(format_info(info_from_path(args.model, dtype_bytes=args.dtype)))
    scfg = _spiking_config_of(args.model)
    if scfg is not None:
        print(f"\nspiking checkpoint: {len(scfg.targets)} spiking linear layers "
              f"({scfg.preset or 'custom targets'} preset, {scfg.coding} coding, k = {scfg.k:g}, "
              f"INT8 weights in groups of {scfg.group_size})"
              + (f"; query/KV hooks in {len(scfg.attention_hooks)} attention layers"
                 if scfg.attention_hooks else "")
              + ("; content digests of every file" if scfg.digests else
                 "; no content digests (written before sbsnn recorded them)"))
        if scfg.prefix:
            print(_prefix_line(scfg.prefix))
    return 0


def _load_spiking(path, verify: bool):
    """load_spiking, with a note (not a warning) when the checkpoint has no digests."""
    import sbsnn

    model = sbsnn.load_spiking(path, verify=verify)
    if verify and not model.spiking_config.digests:
        print(f"note: {path} has no content digests (written by an sbsnn before they were "
              "recorded), so its files were not verified; convert it again to add them",
              file=sys.stderr)
    return model


def _generation_options(args) -> None:
    from sbsnn.models.hybrid import check_generation

    check_generation(args.max_new_tokens, args.temperature, args.top_k, args.seed,
                     names=("--max-new-tokens", "--temperature", "--top-k", "--seed"))


def _debug_route(args, command: str, model, backend: str = "torch") -> None:
    """With --debug: which route computed the exact group sums (int8 GEMM or float32)."""
    import os

    if not (getattr(args, "debug", False) or os.environ.get("SBSNN_DEBUG")):
        return
    from sbsnn.converters.quant import route_description

    buffers = model.buffers() if hasattr(model, "buffers") else ()   # a path: pipeline stages
    device = next((b.device for b in buffers), "cpu")
    route = "CuPy event kernels" if backend == "cupy" else route_description(device)
    print(f"sbsnn {command}: integer route (group sums): {route}", file=sys.stderr)


def cmd_generate(args) -> int:
    import sbsnn
    from sbsnn.checks import read_text_file
    from sbsnn.errors import OptionError

    _generation_options(args)
    prompt = (read_text_file(args.prompt_file, "the prompt (--prompt-file)") if args.prompt_file
              else args.prompt)
    if not prompt:
        raise OptionError("--prompt is empty: give at least one character to continue")
    _threads(args)
    if _spiking_config_of(args.model) is not None:  # a spiking model answering a prompt
        model = _load_spiking(args.model, verify=not args.no_verify)
        _debug_route(args, "generate", model)
    else:
        model = sbsnn.load_model(args.model, allow_pickle=args.allow_pickle)
    sys.stdout.write(prompt)
    t0 = time.perf_counter()
    n = 0
    for piece in model.stream(prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
        n += 1
    dt = time.perf_counter() - t0
    print(f"\n[{n} pieces in {dt:.1f} s]", file=sys.stderr)
    return 0


def _conversion_options(args) -> None:
    from sbsnn.checks import check_group_size, check_k

    check_k(args.k, "--k")
    check_group_size(args.group_size, "--group-size")


def _convert_calibrated(args) -> int:
    """``sbsnn convert --calibrate TEXT``: :func:`sbsnn.runs.calibrate.calibrate_checkpoint`."""
    from sbsnn.converters.calibration import SpikeBudget
    from sbsnn.runs.calibrate import calibrate_checkpoint

    budget = SpikeBudget.parse(args.spike_budget) if args.spike_budget is not None else None
    prefix, prefix_text = _prefix_options(args)
    r = calibrate_checkpoint(args.src, args.out, args.calibrate, budget, eval_texts=args.eval,
                             eval_tokens=args.eval_tokens, coding=args.coding, preset=args.preset,
                             k=args.k, group_size=args.group_size, targets=args.targets,
                             exclude=args.exclude, calibration_tokens=args.calibration_tokens,
                             refine_epochs=args.refine_epochs, refine_state=args.refine_state,
                             force=args.force, allow_pickle=args.allow_pickle,
                             progress=not args.quiet, prefix=prefix, prefix_text=prefix_text)
    print(f"wrote {args.out}: {len(r.spiking_config.targets)} spiking linear layers; calibration "
          f"{r.calibration_seconds:.0f} s, evaluation {r.evaluation_seconds:.0f} s, "
          f"{r.seconds:.0f} s in all (report: {Path(args.out) / 'calibration.json'})")
    print(r.format())
    if r.spiking_config.prefix:
        print("  " + _prefix_line(r.spiking_config.prefix))
    return 0


def _prefix_options(args):
    """``(prefix, prefix_text)`` of --prefix (``bos`` or comma-separated token ids) and
    --prefix-text, as the API takes them."""
    from sbsnn.errors import OptionError

    if args.prefix is None:
        return None, args.prefix_text
    if args.prefix == "bos":
        return "bos", None
    try:
        ids = [int(t) for t in args.prefix.split(",")]
    except ValueError:
        raise OptionError(f"--prefix {args.prefix!r}: give 'bos' or comma-separated token ids "
                          "(e.g. 2,105); a text goes to --prefix-text") from None
    return ids, None


def _prefix_line(meta) -> str:
    """One line on a checkpoint's constant prefix: size and one-off cost."""
    what = f"text {meta['text'][:40]!r}" if meta.get("text") else f"ids {meta['ids'][:8]}"
    return (f"constant prefix: {meta['tokens']} token(s) ({what}); its state ({meta['bytes']:,} "
            f"bytes) computed once in float in {1e3 * meta['seconds']:.1f} ms; every document "
            "starts from it and the prefix tokens are never simulated")


def cmd_convert(args) -> int:
    from sbsnn.runs import process_group
    from sbsnn.runs.convert import convert_checkpoint_split

    _conversion_options(args)
    _check_apart(args.src, args.out, "source checkpoint", option="OUT")
    _threads(args)
    from sbsnn.errors import OptionError

    if args.calib is not None:
        raise OptionError("--calib was renamed --eval (it evaluates a text; --calibrate TEXT "
                          "calibrates the conversion on a text)")
    if args.calibrate is None:
        for opt, v in (("--spike-budget", args.spike_budget),
                       ("--calibration-tokens", args.calibration_tokens),
                       ("--refine-epochs", args.refine_epochs),
                       ("--refine-state", args.refine_state)):
            if v is not None:
                raise OptionError(f"{opt} needs --calibrate TEXT (the text to calibrate on)")
    else:
        from sbsnn.checks import check_int
        from sbsnn.converters.calibration.refine import check_epochs

        if args.calibration_tokens is None:
            args.calibration_tokens = 32768
        if args.refine_epochs is None:
            args.refine_epochs = 0
        check_epochs(args.refine_epochs, "--refine-epochs")
        check_int(args.calibration_tokens, "--calibration-tokens", minimum=2)
        check_int(args.eval_tokens, "--eval-tokens", minimum=2)
        import os

        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise OptionError("convert --calibrate runs in one process; launch it without torchrun")
        return _convert_calibrated(args)
    prefix, prefix_text = _prefix_options(args)
    if args.eval:
        from sbsnn.runs import load_documents

        evaluate = [d.text for d in load_documents(args.eval)]
    else:
        evaluate = None
    t0 = time.perf_counter()
    with process_group() as g:   # under torchrun: the blocks split across the ranks
        scfg = convert_checkpoint_split(args.src, args.out, preset=args.preset, coding=args.coding,
                                        k=args.k, group_size=args.group_size, targets=args.targets,
                                        exclude=args.exclude, force=args.force,
                                        allow_pickle=args.allow_pickle, progress=not args.quiet,
                                        group=g, prefix=prefix, prefix_text=prefix_text)
    if not g.is_main:
        return 0
    q = scfg.quantization
    print(f"wrote {args.out}: {len(scfg.targets)} spiking linear layers "
          f"({scfg.preset or 'custom targets'}, {scfg.coding}, k={scfg.k:g}, "
          f"group {scfg.group_size}) in {time.perf_counter() - t0:.1f} s"
          + (f" on {g.world_size} ranks" if g.distributed else ""))
    print(f"  INT8 codes: {q['codes']:,}; largest weight error {q['max_abs_weight_error']:.3g}; "
          f"clamped to +-127: {q['clamped']:,} (largest error from a clamp "
          f"{q['max_clamp_weight_error']:.3g})")
    if scfg.prefix:
        print("  " + _prefix_line(scfg.prefix))
    if evaluate is not None:
        import sbsnn
        from sbsnn.analysis import fidelity_documents

        f = fidelity_documents(sbsnn.load_model(args.src, allow_pickle=args.allow_pickle),
                               sbsnn.load_spiking(args.out), evaluate)
        print(f"  fidelity on {args.eval} ({f.tokens:,} predictions, {f.documents} "
              f"document{'s' if f.documents != 1 else ''}): {f.format()}")
    return 0


def _simulation_options(args) -> None:
    from sbsnn.checks import check_block_size, check_int, check_max_tokens
    from sbsnn.errors import OptionError

    check_block_size(args.block_size, "--block-size")
    check_max_tokens(args.max_tokens, "--max-tokens", hint=" (leave it out for the whole text)")
    check_int(args.trace_tokens, "--trace-tokens", minimum=-1, hint=" (-1: all)")
    if args.prompt is not None and not args.prompt:
        raise OptionError("--prompt is empty: give the text to simulate")
    if args.record_events and not args.record:
        raise OptionError("--record-events needs --record FILE.h5 (the events are stored there)")
    if args.record:
        from sbsnn.sim.recorder import check_record_path

        check_record_path(args.record, option="--record")


def cmd_simulate(args) -> int:
    import sbsnn
    from sbsnn.errors import OptionError
    from sbsnn.runs import process_group, simulate_documents

    _simulation_options(args)
    _threads(args)
    trace = None
    if args.trace:
        from sbsnn.sim import TraceSpec

        if args.pipeline:
            raise OptionError("--trace needs one process without --pipeline")
        trace = TraceSpec(tuple(args.trace), tokens=None if args.trace_tokens < 0 else args.trace_tokens)
    elif args.trace_tokens != _TRACE_TOKENS_DEFAULT:
        raise OptionError("--trace-tokens needs --trace LAYER_GLOB")
    meta = {"model_dir": str(args.spiking_dir)}
    opts = dict(backend=args.backend, record=args.record, block_size=args.block_size,
                max_tokens=args.max_tokens, progress=not args.quiet,
                record_events=args.record_events, metadata=meta)
    with process_group() as g:   # under torchrun: documents (or, --pipeline, layers) split
        _use_local_device(g)
        model = (args.spiking_dir if args.pipeline
                 else _load_spiking(args.spiking_dir, verify=not args.no_verify))
        if args.prompt is not None and not (g.distributed or args.pipeline):
            r = sbsnn.simulate(model, args.prompt, return_logits=False, trace=trace, **opts)
        else:   # a document set, or one text split over ranks or stages
            r = simulate_documents(model, args.text or [args.prompt], trace=trace,
                                   pipeline=args.pipeline, group=g, **opts)
    if not g.is_main:
        return 0
    _debug_route(args, "simulate", model, r.backend)
    t = r.totals()
    docs = getattr(r, "documents", None)
    print(f"simulated {r.tokens:,} tokens"
          + (f" of {len(docs):,} document{'s' if len(docs) != 1 else ''}" if docs else "")
          + f" through {len(r.layers)} spiking layers ({r.backend} backend, {r.coding} coding) "
          f"in {r.seconds:.1f} s"
          + (f" on {g.world_size} ranks ({'pipeline stages' if args.pipeline else 'documents split'})"
             if g.distributed else ""))
    print(f"  events          {t['events']:,} ({t['events_pos']:,} positive, {t['events_neg']:,} negative)")
    print(f"  synaptic ops    {t['synaptic_ops']:,} (dense MACs {t['dense_macs']:,}: "
          f"ratio {t['synaptic_ops'] / max(1, t['dense_macs']):.3f})")
    print(f"  zero counts     {100 * t['zero_fraction']:.2f} % of {t['elements']:,} inputs; "
          f"{t['spikes_per_element']:.3f} spikes per input; slot sparsity {100 * t['slot_sparsity']:.2f} %")
    print(f"  time steps      up to {t['time_steps_max']:,} per call; largest count {t['count_max']:,}")
    pre = getattr(model, "prefix", None)
    if pre is not None:
        print(f"  prefix          {pre.tokens} token(s) before every document, computed once in "
              "float at conversion: not simulated, not counted above")
    for name, tr in r.traces.items():
        pos, neg = tr.events_per_step()
        spt = tr.steps_per_token()
        busy = int((pos + neg > 0).sum())
        print(f"  trace {name}: {len(tr.calls)} call(s), {tr.steps_max:,} steps ({busy:,} with "
              f"events), steps per token mean {float(spt.float().mean()) if spt.numel() else 0:.1f} "
              f"max {int(spt.max()) if spt.numel() else 0:,}")
    if args.record:
        print(f"  recording       {args.record}")
    return 0


_TRACE_TOKENS_DEFAULT = 32  # sbsnn.sim.trace.DEFAULT_TOKENS (not imported: torch loads slowly)
_FRONTIER_CODINGS = ("ternary", "bitwise")
_FRONTIER_EVAL_TOKENS = 16384


def _use_local_device(g) -> None:
    """In a multi-rank run on GPUs, this process works on GPU LOCAL_RANK (the command owns
    its process, so it may set the current device; the library never does)."""
    import torch

    if g.distributed and torch.cuda.is_available():
        torch.cuda.set_device(g.local_rank)
        try:
            import cupy

            cupy.cuda.Device(g.local_rank).use()
        except Exception:  # noqa: BLE001 - no CuPy: the torch backend needs nothing more
            pass


def cmd_demo(args) -> int:
    from sbsnn.checks import check_int
    from sbsnn.runs.demo import run_demo

    check_int(args.max_chars, "--max-chars", minimum=2, none_ok=True,
              hint=" (leave it out for the whole text)")
    check_int(args.sim_tokens, "--sim-tokens", minimum=0, none_ok=True, hint=" (0: the whole text)")
    _check_threads(args)
    _check_out_dir(args.out)
    _threads(args)               # the command owns its process; run_demo never sets threads
    return run_demo(out=args.out, max_chars=args.max_chars,
                    sim_tokens="auto" if args.sim_tokens is None else args.sim_tokens,
                    profile=args.profile, backend=args.backend, progress=not args.quiet)


def cmd_report(args) -> int:
    from sbsnn.analysis.report import build_report, format_summary
    from sbsnn.checks import check_window, read_json_file

    check_window(args.window, "--window")
    _check_out_dir(args.out)
    fid = read_json_file(args.fidelity, "the --fidelity file") if args.fidelity else None
    report = build_report(args.recording, args.out, profile=args.profile, fidelity=fid,
                          window=args.window)
    print(f"sbsnn report: {args.recording}")
    print(format_summary(report, Path(args.out) / "report.html"))
    return 0


def _sweep_frontier(args) -> int:
    """``sbsnn sweep --frontier``: :func:`sbsnn.runs.frontier.frontier`, printed and saved."""
    import os

    import sbsnn
    from sbsnn.checks import check_int
    from sbsnn.errors import OptionError
    from sbsnn.runs.frontier import (FRONTIER_KS, format_frontier, format_points, frontier,
                                     save_frontier)

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise OptionError("sweep --frontier runs in one process; launch it without torchrun")
    for opt, bad in (("--spike-budget", args.spike_budget),
                     ("--max-chars", args.max_chars),
                     ("--coding", args.coding != "ternary")):
        if bad:
            raise OptionError(f"{opt} is an option of the k sweep; with --frontier the budgets "
                              "are what plain k spends (--k), the codings --codings, the "
                              "held-out text is cut at --eval-tokens")
    if not args.text:
        raise OptionError("--frontier needs --text HELD_OUT (text the calibration did not see; "
                          "at least 16,384 predictions over two kinds of text for the goals)")
    check_int(args.eval_tokens, "--eval-tokens", minimum=2)
    prefix, prefix_text = _prefix_options(args)
    if prefix is None and prefix_text is None:
        prefix = "auto"
    model = sbsnn.load_model(args.checkpoint, allow_pickle=args.allow_pickle)
    ks = args.k if args.k is not None else list(FRONTIER_KS)
    print(f"sbsnn sweep --frontier: {args.checkpoint}, {args.preset} preset, codings "
          f"{', '.join(args.codings)}, k = {', '.join(f'{k:g}' for k in ks)}; held out "
          f"{args.text} (at most {args.eval_tokens:,} tokens)"
          + (f"; calibrated on {args.calibrate}" if args.calibrate else ""))

    def show(p):
        if not args.quiet:
            print(f"  {p['coding']:<8} {p['method']:<18} {str(p['label']):<14} "
                  f"{p['spikes_per_element']:.3f} spikes/el  x{p['perplexity_ratio']:.4f}  "
                  f"KL {p['mean_kl']:.4f}  ({p['build_seconds'] + p['eval_seconds']:.0f} s)",
                  flush=True)

    result = frontier(model, args.text, calibration_texts=args.calibrate, codings=args.codings,
                      ks=ks, prefix=prefix, prefix_text=prefix_text,
                      finetuned=args.finetuned or None, preset=args.preset,
                      calibration_tokens=args.calibration_tokens, eval_tokens=args.eval_tokens,
                      progress=not args.quiet, on_point=show)
    doc = save_frontier(result, args.out, {"checkpoint": str(args.checkpoint), "text": args.text,
                                           "calibration_text": args.calibrate})
    print(format_points(result))
    print(format_frontier(result))
    print(f"wrote {Path(args.out) / 'frontier.json'}, {Path(args.out) / doc['files']['plot']}")
    return 0


def cmd_sweep(args) -> int:
    import sbsnn
    from sbsnn.analysis.energy import load_profile
    from sbsnn.checks import check_int, check_k
    from sbsnn.errors import OptionError
    from sbsnn.runs import load_documents, process_group
    from sbsnn.runs.sweep import format_sweep, save_sweep, sweep_documents

    for k in args.k or ():
        check_k(k, "--k")
    check_int(args.max_chars, "--max-chars", minimum=1, none_ok=True,
              hint=" (leave it out for the whole text)")
    _check_out_dir(args.out)
    _check_apart(args.checkpoint, args.out, "checkpoint", contain_ok=True)
    load_profile(args.profile)            # an unknown profile fails before any work
    _threads(args)
    if args.frontier:
        return _sweep_frontier(args)
    for opt, v in (("--codings", list(args.codings) != list(_FRONTIER_CODINGS)),
                   ("--finetuned", args.finetuned), ("--prefix", args.prefix),
                   ("--prefix-text", args.prefix_text),
                   ("--eval-tokens", args.eval_tokens != _FRONTIER_EVAL_TOKENS)):
        if v:
            raise OptionError(f"{opt} needs --frontier")
    if args.k is None:
        args.k = [2.0, 2.5, 3.0, 3.5, 4.0]
    if args.spike_budget and not args.calibrate:
        raise OptionError("--spike-budget needs --calibrate TEXT (the text to calibrate on)")
    if args.calibrate and not args.spike_budget:
        raise OptionError("--calibrate needs --spike-budget B1 [B2 ...] (spikes per element)")
    check_int(args.calibration_tokens, "--calibration-tokens", minimum=2)
    cal_docs = [d.text for d in load_documents(args.calibrate)] if args.calibrate else None
    if args.text:
        docs, source = load_documents(args.text), args.text
    else:
        from sbsnn.data import heldout_text
        docs = load_documents([heldout_text()])
        source = "the shipped held-out sample (tiny-hybrid/heldout.txt)"
    model = sbsnn.load_model(args.checkpoint, allow_pickle=args.allow_pickle)
    with process_group() as g:   # under torchrun: the documents split across the ranks
        per_document = len(docs) > 1 or g.distributed   # one text in one process: its rows
        chars = sum(min(len(d.text), args.max_chars or len(d.text)) for d in docs)
        what = (f"{len(docs):,} documents ({chars:,} characters) of {source}"
                + (f", split over {g.world_size} ranks" if g.distributed else "")
                if per_document else f"{chars:,} characters of {source}")
        if g.is_main:
            print(f"sbsnn sweep: {args.checkpoint}, {args.preset} preset, {args.coding} coding, "
                  f"k = {', '.join(f'{k:g}' for k in args.k)}"
                  + (f", calibrated on {args.calibrate} at spike budgets "
                     f"{', '.join(f'{b:g}' for b in args.spike_budget)}" if args.spike_budget else "")
                  + f"; {what}")
        rows = sweep_documents(model, docs, ks=args.k, preset=args.preset, coding=args.coding,
                               profile=args.profile, max_chars=args.max_chars or None,
                               progress=not args.quiet, spike_budgets=args.spike_budget or (),
                               calibration_texts=cal_docs,
                               calibration_tokens=args.calibration_tokens,
                               per_document=per_document, group=g)
    if not g.is_main:
        return 0
    doc = save_sweep(rows, args.out, {"checkpoint": str(args.checkpoint), "text": source,
                                      "chars": rows[0]["chars"] if rows else 0,
                                      "preset": args.preset, "coding": args.coding,
                                      "profile": args.profile, "calibration_text": args.calibrate})
    print(format_sweep(rows))
    print(f"wrote {Path(args.out) / 'sweep.json'}, "
          + ", ".join(str(Path(args.out) / f) for f in doc["files"].values()))
    return 0


def cmd_eval(args) -> int:
    from sbsnn.checks import check_block_size, check_int
    from sbsnn.runs.evaluate import evaluate_checkpoints

    check_int(args.limit, "--limit", minimum=1, none_ok=True, hint=" (leave it out for every item)")
    check_block_size(args.block_size, "--block-size")
    check_int(args.max_length, "--max-length", minimum=2, none_ok=True)
    check_int(args.num_fewshot, "--num-fewshot", minimum=0, none_ok=True)
    if args.out is not None:
        _check_out_dir(args.out)
        _check_apart(args.model, args.out, "model", contain_ok=True)
        if args.spiking is not None:
            _check_apart(args.spiking, args.out, "spiking checkpoint", contain_ok=True)
    _threads(args)

    def done(name, entry):
        if not args.quiet:
            print(f"  {name}: {entry['items']:,} items", file=sys.stderr)

    ev, files = evaluate_checkpoints(
        args.model, args.tasks, spiking=args.spiking, include_path=args.include_path,
        limit=args.limit, out=args.out, offline=not args.download, block_size=args.block_size,
        max_length=args.max_length, profile=args.profile, num_fewshot=args.num_fewshot,
        allow_pickle=args.allow_pickle, verify=not args.no_verify, progress=not args.quiet,
        on_task=done)
    print(ev.markdown(), end="")
    if files:
        print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def lm_eval_main() -> None:
    """``sbsnn-lm-eval``: lm-eval's own command line with ``--model sbsnn`` registered."""
    try:
        from sbsnn.runs.lm_eval_model import main
    except ImportError as e:
        raise SystemExit(f"sbsnn-lm-eval: error: needs lm-eval ({e}); install it: "
                         "pip install -c constraints.txt 'sbsnn[eval]'") from None
    main()


def cmd_finetune(args) -> int:
    """``sbsnn finetune``: :func:`sbsnn.runs.finetune.finetune_checkpoint`."""
    from sbsnn.runs import process_group
    from sbsnn.runs.finetune import FinetuneSettings, finetune_checkpoint

    options = dict(steps=args.steps, lr=args.lr, train=tuple(args.train), rank=args.rank,
                   batch=args.batch, block_size=args.block_size,
                   positions=None if args.positions == 0 else args.positions, seed=args.seed,
                   eval_every=args.eval_every, eval_windows=args.eval_windows,
                   save_every=args.save_every)
    FinetuneSettings.checked(names={f: "--" + f.replace("_", "-") for f in options}, **options)
    if args.no_state and args.state is not None:
        from sbsnn.errors import OptionError

        raise OptionError("--no-state and --state FILE contradict each other; give one")
    _check_apart(args.spiking, args.out, "spiking checkpoint", option="OUT")
    _check_threads(args)
    state = args.state if args.state is not None else f"{Path(args.out)}.finetune-state.pt"
    _threads(args)
    with process_group() as g:   # under torchrun: each batch's windows split across the ranks
        _use_local_device(g)
        r = finetune_checkpoint(args.spiking, args.out, args.text, args.float,
                                eval_texts=args.eval, eval_tokens=args.eval_tokens,
                                state_path=None if args.no_state else state, force=args.force,
                                allow_pickle=args.allow_pickle, verify=not args.no_verify,
                                progress=not args.quiet, group=g, **options)
    if not g.is_main:
        return 0
    print(f"wrote {args.out} in {r.seconds:.0f} s (record: {Path(args.out) / 'finetune.json'}"
          + ("" if args.no_state else f"; state: {state}") + ")")
    print(r.format())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sbsnn import __version__

    ap = _Parser(
        prog="sbsnn", description="Spiking conversion, event-driven simulation and reports "
        "for hybrid LLMs (GLA + sliding-window attention, as in SpikingBrain). An error is "
        "printed on one line and the exit status is 2 (130 when interrupted, 143 on SIGTERM).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"sbsnn {__version__}")
    ap.add_argument("--debug", action="store_true",
                    help="show the traceback of an error (also after the command)")
    common = _Parser(add_help=False)   # --debug after the command too, without resetting it
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, func, **kw) -> argparse.ArgumentParser:
        """A subcommand calling ``func(args)``, with --debug after the command too."""
        p = sub.add_parser(name, parents=[common], **kw)
        p.set_defaults(func=func)
        return p

    p = command("demo", cmd_demo, help="run the main job on the embedded model",
                description="Convert the embedded tiny-hybrid model to spiking form "
                "(paper preset, ternary coding, k = 3), measure its fidelity on the "
                "shipped held-out text, simulate it event by event with recording "
                "(OUT/spikes.h5), write the report (report.html, report.json, plots) "
                "and print a summary.")
    p.add_argument("--out", default="sbsnn-demo", help="directory for the outputs (default: %(default)s)")
    p.add_argument("--max-chars", type=int, default=None,
                   help="use only the first N characters of the held-out text")
    p.add_argument("--sim-tokens", type=int, default=None, metavar="N",
                   help="simulate only the first N tokens event by event (default and 0: "
                        "the whole text)")
    _add(p, "profile", "backend", "threads", "quiet")

    p = command("report", cmd_report, help="sparsity, energy and plots from a recording",
                description="Read a recording (sbsnn simulate --record FILE.h5) and write "
                "report.json, a self-contained report.html and PNG plots into OUT "
                "(atomically); print a summary. Schema: docs/report.md.")
    p.add_argument("recording", help="HDF5 recording written by sbsnn simulate --record")
    p.add_argument("--out", required=True, help="output directory")
    _add(p, "profile")
    p.add_argument("--fidelity", metavar="FILE.json",
                   help="include fidelity figures (a JSON object as Fidelity.to_dict() writes)")
    p.add_argument("--window", type=int, default=3,
                   help="fixed window of the windowed slot sparsity (default: %(default)s)")

    p = command("sweep", cmd_sweep, help="fidelity, sparsity and energy against k",
                description="Convert a checkpoint at several k (V_th = mean|x|/k) and "
                "measure perplexity, top-1 agreement, KL, sparsity and energy for each, "
                "beside SpikingBrain-7B's Table 11; writes OUT/sweep.json and "
                "OUT/sweep.png and prints the table.")
    p.add_argument("checkpoint", metavar="CKPT", help="float checkpoint directory (config.json + "
                   "*.safetensors), .gguf file, or embedded model name (tiny-hybrid)")
    _add(p, "allow_pickle")
    p.add_argument("--k", type=float, nargs="+", default=None,
                   help="values of k (default: 2 2.5 3 3.5 4; with --frontier 2 3 4 6 8 12 16)")
    p.add_argument("--text", metavar="PATH", help="text file, JSONL file (\"text\" per line) or "
                   "directory of .txt files (default: the shipped held-out sample); under "
                   "torchrun the documents are split across the ranks")
    p.add_argument("--out", required=True, help="output directory")
    _add(p, "preset", "coding", "profile")
    p.add_argument("--max-chars", type=int, default=None,
                   help="use only the first N characters (of each document)")
    p.add_argument("--spike-budget", type=float, nargs="+", metavar="B",
                   help="with --calibrate: also calibrate at each budget (mean spikes per element "
                        "on the calibration text) and add the calibrated rows; writes "
                        "OUT/sweep_spikes.png (fidelity against spikes, plain and calibrated)")
    p.add_argument("--calibrate", metavar="TEXT", help="calibration text for --spike-budget (text "
                   "file, .jsonl or directory of .txt); evaluate on other text with --text")
    p.add_argument("--calibration-tokens", type=int, default=32768, metavar="N",
                   help="at most N calibration tokens (default: %(default)s)")
    p.add_argument("--frontier", action="store_true",
                   help="instead of the k sweep: per coding, the spikes per element each method "
                        "(plain k, calibrated, calibrated + constant prefix, fine-tuned) needs to "
                        "reach a perplexity ratio of x1.01, x1.02, x1.05 and a KL of 0.02 on "
                        "--text (held out; calibration on --calibrate); writes "
                        "OUT/frontier.json and OUT/frontier.png (docs/calibration.md)")
    p.add_argument("--codings", nargs="+", default=list(_FRONTIER_CODINGS),
                   choices=["binary", "ternary", "bitwise", "twos_complement"],
                   help="with --frontier: the codings (default: ternary bitwise)")
    p.add_argument("--eval-tokens", type=int, default=_FRONTIER_EVAL_TOKENS, metavar="N",
                   help="with --frontier: at most N tokens of --text (default: %(default)s)")
    p.add_argument("--finetuned", nargs="+", metavar="SPIKING_DIR",
                   help="with --frontier: fine-tuned spiking checkpoints (sbsnn finetune's "
                        "output) to place on the frontier (without them the method is skipped, "
                        "with a note)")
    pg = p.add_mutually_exclusive_group()
    pg.add_argument("--prefix", metavar="bos|IDS",
                    help="with --frontier: the constant prefix of the 'calibrated+prefix' method "
                         "(default: the model's BOS token, when it has one)")
    pg.add_argument("--prefix-text", metavar="TEXT",
                    help="with --frontier: the constant prefix given as text")
    _add(p, "threads", "quiet")

    p = command("eval", cmd_eval, help="lm-eval tasks, float and spiking side by side",
                description="Run lm-evaluation-harness tasks (needs the eval extra) on a model "
                "and, with --spiking, on its spiking checkpoint: each task's metrics side by "
                "side, the recovery (spiking / float; float / spiking where lower is better), "
                "and the spiking side's spikes per element and energy per token. Offline by "
                "default: local YAML tasks (dataset_path: json) and sbsnn's own (sbsnn_cloze, "
                "sbsnn_heldout) run anywhere; a task that needs a download is refused by name "
                "(--download allows it). Writes OUT/results.json and OUT/results.md "
                "(docs/evaluation.md).")
    _add_model_arg(p)
    p.add_argument("--spiking", metavar="SPIKING_DIR",
                   help="a spiking checkpoint of MODEL (sbsnn convert's output), evaluated beside it")
    p.add_argument("--tasks", required=True, metavar="T1,T2",
                   help="task names, comma-separated: sbsnn_cloze, sbsnn_heldout, a task of "
                        "--include-path or of lm-eval (arc_challenge, hellaswag, mmlu, wikitext)")
    p.add_argument("--include-path", metavar="DIR", action="append",
                   help="a folder of lm-eval task YAML files (repeatable)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N items per task (default: all)")
    p.add_argument("--out", metavar="DIR", help="write results.json and results.md here")
    p.add_argument("--download", action="store_true",
                   help="allow the Hugging Face libraries to download task data (default: "
                        "offline, only local files and the local cache)")
    p.add_argument("--num-fewshot", type=int, default=None, metavar="N",
                   help="few-shot examples per item (default: each task's own)")
    p.add_argument("--block-size", type=int, default=256,
                   help="tokens per step through the decoding state (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="context a request may use (default: the model's max_position_embeddings)")
    _add(p, "profile", "threads", "quiet", "no_verify")

    p = command("convert", cmd_convert, help="convert a checkpoint to spiking form",
                description="Convert a float checkpoint to a spiking checkpoint: INT8 "
                "weights and adaptive-threshold spikes on the inputs of the targeted "
                "linear layers. Works layer by layer from the memory-mapped source; "
                "writes a temporary directory and renames it at the end.")
    p.add_argument("src", help="float checkpoint: directory (config.json + safetensors), "
                               "llama.cpp .gguf file, or embedded name")
    p.add_argument("out", help="output directory (must not exist unless --force)")
    _add(p, "preset", "coding")
    p.add_argument("--k", type=float, default=3.0, help="threshold divisor, V_th = mean|x|/k (default: 3)")
    p.add_argument("--group-size", type=int, default=128, help="inputs per INT8 weight scale (default: 128)")
    p.add_argument("--targets", nargs="+", metavar="GLOB",
                   help="module-name patterns to convert instead of a preset, e.g. '*.q_proj' '*.mlp.*'")
    p.add_argument("--exclude", nargs="+", metavar="GLOB", help="module-name patterns to leave float")
    p.add_argument("--eval", metavar="TEXT", help="text file, .jsonl or directory of .txt: print "
                   "float vs spiking perplexity (with a bootstrap interval over its documents), "
                   "top-1 agreement, KL and recovery on it (with --calibrate: the overall "
                   "before/after report is measured on it)")
    p.add_argument("--eval-tokens", type=int, default=8192, metavar="N",
                   help="with --calibrate --eval: at most N tokens of the evaluation text "
                        "(default: %(default)s)")
    p.add_argument("--calib", help=argparse.SUPPRESS)   # renamed --eval: refused by name
    pg = p.add_mutually_exclusive_group()
    pg.add_argument("--prefix", metavar="bos|IDS",
                    help="a constant prefix every document starts with: 'bos' (the model's BOS "
                         "token) or comma-separated token ids; its decoding state is computed "
                         "once in float and stored in OUT, and its tokens are never simulated "
                         "(docs/calibration.md, 'The constant prefix')")
    pg.add_argument("--prefix-text", metavar="TEXT",
                    help="a constant prefix given as text (encoded by the model's tokenizer)")
    p.add_argument("--calibrate", metavar="TEXT", help="calibrate on this text (a text file, a "
                   ".jsonl file with a \"text\" per line, or a directory of .txt files): per-layer "
                   "k allocated by output sensitivity and per-channel smoothing folded into the "
                   "weights, spending at most --spike-budget; writes OUT/calibration.json "
                   "(docs/calibration.md)")
    p.add_argument("--spike-budget", metavar="S", help="with --calibrate: mean spikes per element "
                   "in --coding over all spiking inputs on the calibration text, a number, or "
                   "k=K for what plain conversion at k = K spends there (default: k=<--k>)")
    p.add_argument("--calibration-tokens", type=int, default=None, metavar="N",
                   help="with --calibrate: use at most the first N tokens (default: 32768)")
    p.add_argument("--refine-epochs", type=int, default=None, metavar="N",
                   help="with --calibrate: epochs of straight-through distillation of the norm "
                        "weights on the first 2,048 calibration tokens after the allocation "
                        "(default: 0, off; 4 takes about 2 minutes for Gemma 3 270M on 2 cores)")
    p.add_argument("--refine-state", metavar="FILE", default=None,
                   help="with --calibrate: save the refinement's progress to FILE after every "
                        "epoch and resume from it if it exists (removed when calibration ends)")
    _add(p, "threads")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _add(p, "allow_pickle", "quiet")

    p = command("finetune", cmd_finetune, help="distil the float model into a spiking checkpoint",
                description="Spiking-aware fine-tuning: train a spiking checkpoint (norm weights, "
                "weight codes on their INT8 grid, scale gains or low-rank adapters) to match its "
                "float model's next-token distributions (KL over the vocabulary) through the "
                "straight-through gradient, every projection input still spiking; writes an "
                "ordinary spiking checkpoint OUT with finetune.json. Saves its progress to a "
                "state file and continues from it when rerun with the same options; under "
                "torchrun each batch is split across the ranks (docs/calibration.md).")
    p.add_argument("spiking", metavar="SPIKING", help="spiking checkpoint directory (sbsnn convert's "
                   "output, calibrated or not)")
    p.add_argument("out", metavar="OUT", help="output directory (must not exist unless --force)")
    p.add_argument("--float", required=True, metavar="SRC", help="the float checkpoint SPIKING was "
                   "converted from (directory, .gguf or embedded name): the teacher")
    p.add_argument("--text", required=True, metavar="PATH", help="training text: a text file, a "
                   ".jsonl file (\"text\" per line) or a directory of .txt files; each document "
                   "is cut into windows of --block-size tokens")
    p.add_argument("--eval", metavar="PATH", help="held-out text (same layouts): its windows give "
                   "the held-out KL shown as it goes, and plain and fine-tuned are compared on it "
                   "at the end (default: the last tenth of the training windows, no comparison)")
    p.add_argument("--eval-tokens", type=int, default=8192, metavar="N",
                   help="at most N tokens of --eval for the final comparison (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (per kind scaled, "
                   "see docs/calibration.md; default: %(default)s)")
    p.add_argument("--train", nargs="+", default=["norms", "codes"], metavar="KIND",
                   choices=["norms", "scales", "codes", "lora"],
                   help="what to train: norms, scales, codes, lora (default: norms codes)")
    p.add_argument("--rank", type=int, default=8, help="rank of the lora adapters (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="windows per step, over all processes "
                   "(default: %(default)s)")
    p.add_argument("--block-size", type=int, default=256, help="tokens per window (default: %(default)s)")
    p.add_argument("--positions", type=int, default=64, help="positions per window whose KL "
                   "counts, sampled (0: all; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="shuffle and sampling seed (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=25, metavar="N",
                   help="held-out KL every N steps (default: %(default)s)")
    p.add_argument("--eval-windows", type=int, default=16, metavar="N",
                   help="held-out windows used for it (default: %(default)s)")
    p.add_argument("--save-every", type=int, default=25, metavar="N",
                   help="save the state every N steps (default: %(default)s)")
    p.add_argument("--state", metavar="FILE", help="state file to save to and resume from "
                   "(default: OUT.finetune-state.pt beside OUT; kept after the run)")
    p.add_argument("--no-state", action="store_true", help="save no state (a rerun starts afresh)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _add(p, "threads", "quiet", "allow_pickle", "no_verify")

    p = command("simulate", cmd_simulate, help="simulate a spiking checkpoint event by event",
                description="Run a spiking checkpoint on a text with every spiking "
                "layer computed from its spike events; print events, synaptic "
                "operations and sparsity; optionally record counts to HDF5.")
    p.add_argument("spiking_dir", help="directory written by sbsnn convert")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", metavar="PATH", help="what to run: a text file, a JSONL file with a "
                   "\"text\" field per line, or a directory of .txt files (each document from a "
                   "fresh decoding state; under torchrun split across the ranks)")
    g.add_argument("--prompt", metavar="STR", help="text given inline")
    p.add_argument("--record", metavar="FILE.h5", help="write counts and thresholds per layer (HDF5)")
    p.add_argument("--record-events", action="store_true", help="also store every event (large)")
    _add(p, "backend")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="simulate at most N tokens (of each document)")
    p.add_argument("--pipeline", action="store_true",
                   help="under torchrun, place the model's blocks across the ranks (one pipeline "
                        "stage each; every rank loads only its blocks) instead of splitting the "
                        "documents")
    p.add_argument("--block-size", type=int, default=256,
                   help="tokens per step through the decoding state (default: %(default)s)")
    _add(p, "threads", "quiet")
    p.add_argument("--trace", metavar="LAYER_GLOB", action="append",
                   help="resolve matching spiking layers in time (repeatable; e.g. "
                        "'model.layers.0.*'): events per step, first/last spike step per "
                        "token, outputs after each step; stored in --record")
    p.add_argument("--trace-tokens", type=int, default=_TRACE_TOKENS_DEFAULT, metavar="N",
                   help="tokens per traced layer whose per-step outputs are kept "
                        "(default: %(default)s; -1: all)")
    _add(p, "no_verify")

    p = command("info", cmd_info, help="layers, parameters and decoding memory of a model",
                description="Describe a model from its config alone: layers by kind, "
                "parameters (total and active for MoE), state and cache bytes per "
                "sequence at 4k and 1M tokens.")
    p.add_argument("model", help="embedded model name, checkpoint directory (float or spiking), "
                                 "config.json, or .gguf file")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="bytes per weight and cache element (auto: the config's torch_dtype, "
                        "else bf16)")

    p = command("generate", cmd_generate, help="continue a prompt, streaming token by token",
                description="Continue a prompt with a float model or a spiking "
                "checkpoint (written by sbsnn convert; its spiking layers run on the "
                "integer path); memory stays constant in length for GLA and window "
                "layers (recurrent state + window cache).")
    _add_model_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", default="\n", help="prompt text (default: a newline)")
    g.add_argument("--prompt-file", help="read the prompt from this file")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    _add(p, "threads", "no_verify")
    return ap


_DISTRIBUTED = ("simulate", "sweep", "convert", "finetune")   # the commands that run under torchrun


class _Terminated(BaseException):
    """SIGTERM: unwinds like an interrupt, so partial outputs are removed on the way."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def report_error(command: str, e: BaseException, where: str = "") -> int:
    """Print ``e`` on one line for the user; the exit status: 2 for an error of the input
    (every :class:`~sbsnn.errors.SbsnnError`, the OS refusing a path, a bad value), 1 for
    anything else (a bug in sbsnn: rerun with --debug and report it)."""
    from sbsnn.errors import SbsnnError, os_error

    status = 2
    if isinstance(e, SbsnnError):
        msg = str(e)
    elif isinstance(e, OSError):
        msg = str(os_error(e))
    elif isinstance(e, UnicodeDecodeError):
        msg = f"input is not UTF-8 text (byte {e.start}: {e.reason})"
    elif isinstance(e, KeyError):
        msg = f"missing entry {e.args[0]!r}" if e.args else "missing entry"
    elif isinstance(e, (ValueError, RuntimeError)):
        msg = str(e) or type(e).__name__
    else:
        status = 1
        msg = (f"internal error ({type(e).__name__}: {e}); rerun with --debug for the "
               "traceback and report it")
    print(f"sbsnn {command}: error{where}: {_one_line(msg)}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    import os
    import signal

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    where = f" (rank {os.environ.get('RANK')} of {world})" if world > 1 else ""
    if world > 1 and args.command not in _DISTRIBUTED:
        print(f"sbsnn {args.command}: error{where}: runs in one process; launch it without "
              f"torchrun ({', '.join(_DISTRIBUTED)} split their work across ranks)", file=sys.stderr)
        return 2
    debug = bool(args.debug or os.environ.get("SBSNN_DEBUG"))
    # A terminated run unwinds like an interrupted one, so partial outputs are removed;
    # the previous handler comes back when the command returns (main may run in-process).
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:       # not the main thread: leave signals alone
        previous = None
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"sbsnn {args.command}: interrupted{where}", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"sbsnn {args.command}: terminated (SIGTERM){where}", file=sys.stderr)
        return 143
    except Exception as e:  # noqa: BLE001 - every error becomes one line (--debug: traceback)
        if debug:
            raise
        return report_error(args.command, e, where)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
