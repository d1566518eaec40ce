"""The CUDA kernels of sbsnn.sim.cupy_backend against their PyTorch references.

Three kinds of tests:

- ``[cuda]`` (marked ``gpu``): the kernels on a real GPU through CuPy; skipped unless
  CuPy imports, allocates and torch sees CUDA (``sbsnn.sim.engine.cupy_usable``).
- ``[emulated]``: the *same* tests with the kernels compiled as host C++ by g++ against a
  small emulation of the CUDA features they use (threads, ``__syncthreads``, warp
  shuffles and ballots, shared memory), so every launch runs all its blocks and threads
  on the CPU through the real Python wrappers. This checks indexing, reductions, prefix
  sums, tails and launch shapes without a GPU; it cannot check the memory model, timing or
  NVRTC (tests/test_cuda_compile.py compiles the sources with nvcc and NVRTC).
  Skipped where g++ lacks C++20 ``<barrier>`` or ``_Float16``.
- the references themselves, on the CPU, against ``sbsnn.neurons.spike_counts``,
  ``sbsnn.converters.quant.group_accumulate`` and the engine's event walk.

Kernel outputs are poisoned (filled with a sentinel the kernel never writes) before each
run, so an element a kernel fails to write shows.
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from sbsnn.converters import SpikingLinear, convert
from sbsnn.converters.quant import group_accumulate, group_accumulate_reference
from sbsnn.models import HybridConfig, HybridForCausalLM
from sbsnn.neurons import num_steps, spike_counts
from sbsnn.sim import cupy_backend as cb
from sbsnn.sim import engine
from sbsnn.sim.engine import accumulate_events_torch, simulate

KERNEL_DIR = Path(cb.__file__).parent / "kernels"
CODINGS = ("binary", "ternary", "bitwise", "twos_complement")

# --------------------------------------------------------------------- host emulation
SHIM = r"""
// sbsnn: host emulation of the CUDA subset the kernels use (tests only).
#include <barrier>
#include <cmath>
#include <cstring>
#include <math.h>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define SBSNN_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static   /* blocks run one after another: one copy serves each block */

struct sb_dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local sb_dim3 threadIdx, blockIdx;
static sb_dim3 blockDim, gridDim;

struct EmuState {
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warp;
    std::vector<unsigned long long> slot;   // one exchange slot per thread
};
static EmuState emu;
static thread_local unsigned emu_lane, emu_warp;

inline void __syncthreads() { emu.block->arrive_and_wait(); }

template <class T> T __shfl_down_sync(unsigned, T v, unsigned delta) {
    static_assert(sizeof(T) <= 8, "");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    const unsigned base = emu_warp * 32;
    emu.slot[base + emu_lane] = bits;
    emu.warp[emu_warp]->arrive_and_wait();
    T r = v;
    if (emu_lane + delta < 32) std::memcpy(&r, &emu.slot[base + emu_lane + delta], sizeof(T));
    emu.warp[emu_warp]->arrive_and_wait();
    return r;
}
template <class T> T __shfl_sync(unsigned, T v, int src) {
    static_assert(sizeof(T) <= 8, "");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    const unsigned base = emu_warp * 32;
    emu.slot[base + emu_lane] = bits;
    emu.warp[emu_warp]->arrive_and_wait();
    T r;
    std::memcpy(&r, &emu.slot[base + (src & 31)], sizeof(T));
    emu.warp[emu_warp]->arrive_and_wait();
    return r;
}
inline unsigned __ballot_sync(unsigned, int pred) {
    const unsigned base = emu_warp * 32;
    emu.slot[base + emu_lane] = pred ? 1 : 0;
    emu.warp[emu_warp]->arrive_and_wait();
    unsigned r = 0;
    for (unsigned i = 0; i < 32; ++i) r |= (emu.slot[base + i] ? 1u : 0u) << i;
    emu.warp[emu_warp]->arrive_and_wait();
    return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float f16_bits_to_float(unsigned short h) { _Float16 x; std::memcpy(&x, &h, 2); return (float)x; }
inline unsigned short float_to_f16_bits(float f) {
    _Float16 x = (_Float16)f; unsigned short h; std::memcpy(&h, &x, 2); return h;
}
inline unsigned short float_to_bf16_bits(float f) {   // round to nearest even, NaN kept
    unsigned u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

template <class P> bool emu_kind_ok(char kind, int size) {
    if (size != (int)sizeof(P)) return false;
    if (std::is_pointer_v<P>) return kind == 'p';
    if (std::is_integral_v<P>) return kind == 'i';
    return kind == 'f';
}

template <class... P, std::size_t... I>
int emu_check(int nargs, const char* kinds, const int* sizes, std::index_sequence<I...>) {
    if (nargs != (int)sizeof...(P)) return 2;
    bool ok = (emu_kind_ok<P>(kinds[I], sizes[I]) && ...);
    return ok ? 0 : 3;
}

template <class... P, std::size_t... I>
void emu_call(void (*k)(P...), void** args, std::index_sequence<I...>) {
    k(*static_cast<P*>(args[I])...);
}

template <class... P>
int emu_launch(void (*k)(P...), sb_dim3 grid, unsigned nthreads, int nargs,
               const char* kinds, const int* sizes, void** args) {
    int rc = emu_check<P...>(nargs, kinds, sizes, std::index_sequence_for<P...>{});
    if (rc) return rc;
    if (nthreads == 0 || nthreads % 32) return 4;
    blockDim = sb_dim3{nthreads, 1, 1};
    gridDim = grid;
    emu.block = std::make_unique<std::barrier<>>(nthreads);
    emu.warp.clear();
    for (unsigned w = 0; w < nthreads / 32; ++w) emu.warp.push_back(std::make_unique<std::barrier<>>(32));
    emu.slot.assign(nthreads, 0);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < nthreads; ++t) {
        pool.emplace_back([=] {
            threadIdx = sb_dim3{t, 0, 0};
            emu_lane = t & 31;
            emu_warp = t >> 5;
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        blockIdx = sb_dim3{x, y, z};
                        emu_call(k, args, std::index_sequence_for<P...>{});
                        emu.block->arrive_and_wait();   // the block is done before the next
                    }
        });
    }
    for (auto& th : pool) th.join();
    return 0;
}
"""


def emulator_source() -> str:
    parts = [SHIM]
    parts += [f'#include "{(KERNEL_DIR / f).resolve()}"' for f in cb.NAME_EXPRESSIONS]
    parts.append('extern "C" int sbsnn_emu_launch(const char* name, unsigned gx, unsigned gy, '
                 'unsigned gz, unsigned bx, int nargs, const char* kinds, const int* sizes, '
                 'void** args) {\n    const std::string n(name);')
    for exprs in cb.NAME_EXPRESSIONS.values():
        for e in exprs:
            parts.append(f'    if (n == "{e}") return emu_launch(&{e}, sb_dim3{{gx, gy, gz}}, bx, '
                         'nargs, kinds, sizes, args);')
    parts.append("    return 1;\n}\n")
    return "\n".join(parts)


class Emulator:
    """Runs cupy_backend's launches on the CPU through the compiled emulation."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        f = self.lib.sbsnn_emu_launch
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 4 + [
            ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_void_p)]
        self.launches: list[str] = []

    def launch(self, filename, name, grid, block, args, device):
        assert name in cb.NAME_EXPRESSIONS[filename], f"{name} is not declared for {filename}"
        assert device.type == "cpu"
        keep, kinds, sizes = [], [], []
        for a in args:
            if isinstance(a, torch.Tensor):
                assert a.device.type == "cpu" and a.is_contiguous()
                v, kind = ctypes.c_void_p(a.data_ptr()), "p"
            elif isinstance(a, np.int32):
                v, kind = ctypes.c_int32(int(a)), "i"
            elif isinstance(a, np.int64):
                v, kind = ctypes.c_int64(int(a)), "i"
            elif isinstance(a, np.float32):
                v, kind = ctypes.c_float(float(a)), "f"
            else:
                raise TypeError(f"{name}: kernel argument {a!r} must be a tensor or a numpy "
                                "scalar of the parameter's type (CuPy would guess its width)")
            keep.append(v)
            kinds.append(kind)
            sizes.append(ctypes.sizeof(v))
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        assert block[1:] == (1, 1) and all(g >= 1 for g in grid)
        ptrs = (ctypes.c_void_p * len(keep))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in keep])
        rc = self.lib.sbsnn_emu_launch(name.encode(), *grid, block[0], len(keep),
                                       "".join(kinds).encode(), (ctypes.c_int * len(sizes))(*sizes), ptrs)
        assert rc == 0, {1: f"unknown kernel {name}", 2: f"{name}: wrong number of arguments",
                         3: f"{name}: an argument's type or width differs from the kernel's",
                         4: f"{name}: block size must be a multiple of 32"}.get(rc, rc)
        self.launches.append(name)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not on PATH: no host emulation of the kernels")
    d = tmp_path_factory.mktemp("emu")
    probe = d / "probe.cpp"
    probe.write_text("#include <barrier>\nint main() { std::barrier<> b(1); b.arrive_and_wait(); "
                     "_Float16 h = (_Float16)1.5f; return (float)h == 1.5f ? 0 : 1; }\n")
    p = subprocess.run([gxx, "-std=c++20", "-pthread", str(probe), "-o", str(d / "probe")],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"g++ lacks C++20 <barrier> or _Float16: {p.stderr[-500:]}")
    src = d / "emulate_kernels.cpp"
    src.write_text(emulator_source())
    lib = d / "libsbsnn_emu.so"
    cmd = [gxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-fno-fast-math",
           "-ffp-contract=off", "-Wall", "-Wno-unused-function", str(src), "-o", str(lib)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"the kernels do not compile as emulated host code:\n{p.stderr[-8000:]}"
    return Emulator(lib)


# Sentinels the kernels never write: poisoned outputs show unwritten elements.
SENTINEL = {torch.int8: -128, torch.int16: -32768, torch.int32: -2**31, torch.int64: -2**62,
            torch.float32: float("nan"), torch.float16: float("nan"), torch.bfloat16: float("nan")}


def poisoned_empty(shape, dtype, device):
    return torch.full(shape, SENTINEL[dtype], dtype=dtype, device=device)


def _gpu_usable() -> bool:
    return engine.cupy_usable()


class Runner:
    """Where the kernels run: 'cuda' (a real GPU) or 'emulated' (host emulation)."""

    def __init__(self, kind: str, device: torch.device, emulator: Emulator | None = None):
        self.kind, self.device, self.emulator = kind, device, emulator

    @property
    def gpu(self) -> bool:
        return self.kind == "cuda"

    def sizes(self, gpu, emulated):
        return gpu if self.gpu else emulated


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def runner(request, monkeypatch):
    monkeypatch.setattr(cb, "_empty", poisoned_empty)
    if request.param == "cuda":
        if not _gpu_usable():
            pytest.skip("needs CuPy and a usable CUDA device (sbsnn.sim.engine.cupy_usable)")
        return Runner("cuda", torch.device("cuda", torch.cuda.current_device()))
    emu = request.getfixturevalue("emulator")
    monkeypatch.setattr(cb, "_launch", emu.launch)
    monkeypatch.setattr(cb, "_check_device", lambda t, what: None)
    monkeypatch.setattr(cb, "_compute_device", lambda t: t.device)
    monkeypatch.setattr(engine, "cupy_usable", lambda: True)
    return Runner("emulated", torch.device("cpu"), emu)


def ulps_apart(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units in the last place (of a's dtype) between a and b."""
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    ia = a.contiguous().view(bits).to(torch.int64)
    ib = b.to(a.dtype).contiguous().view(bits).to(torch.int64)
    return int((ia - ib).abs().max()) if a.numel() else 0  # thresholds are positive


def activations(N, D, dtype, device, seed, silent=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g) * torch.exp(torch.randn(N, 1, generator=g))
    if silent:
        x = x * (torch.rand(N, D, generator=g) >= silent)
    return x.to(dtype).to(device)


def sparse_counts(N, D, dtype, device, seed, silent=0.7, peak=20):
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(-peak, peak + 1, (N, D), generator=g)
    c = c * (torch.rand(N, D, generator=g) >= silent)
    return c.to(dtype).to(device)


def random_codes(D, O, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-127, 128, (O, D), generator=g, dtype=torch.int8).to(device)


# ------------------------------------------------------------------------ counts kernel
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out_dtype", [torch.int8, torch.int16])
def test_spike_counts_kernel(runner, in_dtype, out_dtype):
    shapes = runner.sizes(gpu=[(n, d) for n in (1, 3, 257) for d in (1, 5, 130, 3584)],
                          emulated=[(1, 1), (3, 5), (2, 130), (5, 600), (17, 257)])
    for i, (N, D) in enumerate(shapes):
        x = activations(N, D, in_dtype, runner.device, seed=100 + i, silent=0.3 * (i % 2))
        counts, v_th = cb.spike_counts_cuda(x, 3.0, out_dtype)
        assert counts.dtype == out_dtype and counts.shape == (N, D)
        assert v_th.dtype == in_dtype and v_th.shape == (N, 1)
        # Exact: counts are torch.round(x / V_th) for the kernel's V_th.
        want, _ = cb.spike_counts_reference(x, 3.0, out_dtype, v_th=v_th)
        assert torch.equal(counts, want), (N, D, in_dtype)
        # V_th within a few ulps of torch's own reduction (double vs float summation order;
        # on CUDA torch also divides by multiplying with reciprocals). For 16-bit inputs the
        # reference is computed in float32 and rounded once, the kernel rounds the mean too.
        _, v_ref = cb.spike_counts_reference(x.float(), 3.0, out_dtype)
        v_ref = v_ref.to(in_dtype)
        assert ulps_apart(v_th, v_ref) <= (8 if in_dtype == torch.float32 else 2), (N, D)


def test_spike_counts_kernel_rounds_ties_to_even(runner):
    # mean|x| = 8 / 4 = 2, k = 2 -> V_th = 1 exactly; x / V_th lands on .5 ties.
    x = torch.tensor([[2.5, -0.5, 1.5, 3.5], [-2.5, 0.5, -1.5, -3.5]], device=runner.device)
    counts, v_th = cb.spike_counts_cuda(x, 2.0)
    assert v_th.flatten().tolist() == [1.0, 1.0]
    assert counts.tolist() == [[2, 0, 2, 4], [-2, 0, -2, -4]]
    assert torch.equal(counts, spike_counts(x.cpu(), 2.0, dtype=torch.int8)[0].to(runner.device))


def test_spike_counts_kernel_clamps_threshold(runner):
    x = torch.zeros(2, 7, device=runner.device)
    x[1, 3] = 1e-12  # V_th = 1e-5 (clamped), count 0
    counts, v_th = cb.spike_counts_cuda(x, 3.0)
    assert torch.equal(v_th.cpu(), torch.full((2, 1), 1e-5))
    assert not counts.any()
    big = torch.full((1, 3), 1e9, device=runner.device)  # V_th = 1e4 (clamped): 1e5 > int16
    with pytest.raises(cb.KernelInputError, match="beyond"):
        cb.spike_counts_cuda(big, 3.0, torch.int16)


def test_spike_counts_kernel_rejects_overflow_and_nonfinite(runner):
    x = torch.zeros(3, 300, device=runner.device)
    x[1, 7] = 1.0  # mean|x| = 1/300, V_th = 1/900: count 900 > int8
    with pytest.raises(cb.KernelInputError, match="beyond"):
        cb.spike_counts_cuda(x, 3.0, torch.int8)
    counts, _, peak = cb.spike_counts_cuda(x, 3.0, torch.int16, return_peak=True)
    assert int(counts[1, 7]) == 900 and peak.tolist() == [0.0, 900.0, 0.0]
    x[2, 0] = float("nan")
    with pytest.raises(cb.KernelInputError, match="row 2"):
        cb.spike_counts_cuda(x, 3.0, torch.int16)
    x[2, 0] = float("inf")
    with pytest.raises(cb.KernelInputError, match="row 2"):
        cb.spike_counts_cuda(x, 3.0, torch.int16)


# --------------------------------------------------------------------- compaction kernel
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64])
def test_compact_kernel(runner, dtype):
    shapes = runner.sizes(gpu=[(n, d) for n in (1, 3, 257) for d in (1, 5, 130, 3584)],
                          emulated=[(1, 1), (3, 5), (2, 130), (7, 600)])
    for i, (N, D) in enumerate(shapes):
        for silent in (0.0, 0.7, 1.0):
            counts = sparse_counts(N, D, dtype, runner.device, seed=i, silent=silent)
            for gs in (None, 64, 128, 7):
                got = cb.compact_cuda(counts, gs)
                want = cb.compact_reference(counts, gs)
                assert len(got) == len(want)
                for a, b, what in zip(got, want, ("row_ptr", "channels", "values", "group_ptr")):
                    assert a.dtype == b.dtype, what
                    assert torch.equal(a, b), (what, N, D, silent, gs)


# ------------------------------------------------------------------ accumulation kernel
def test_accumulate_kernel(runner):
    # O picks the load width: 2064 (16 bytes, two tiles), 24 (8), 12 (4), 5 and 257 (1).
    cases = runner.sizes(
        gpu=[(n, d, o, gs) for n in (1, 3, 257) for d in (1, 5, 130, 3584) for o in (2064, 24, 12, 257)
             for gs in (128, 64)],
        emulated=[(1, 1, 5, 128), (3, 5, 24, 64), (3, 130, 12, 64), (2, 130, 2064, 128),
                  (5, 600, 257, 300), (4, 200, 16, 128)])
    for i, (N, D, O, gs) in enumerate(cases):
        codes = random_codes(D, O, runner.device, seed=i)
        codes_t = codes.t().contiguous()
        for silent in (0.7, 0.0, 1.0):
            counts = sparse_counts(N, D, torch.int16, runner.device, seed=i, silent=silent, peak=300)
            row_ptr, channels, values, group_ptr = cb.compact_reference(counts, gs)
            want = cb.accumulate_reference(row_ptr, channels, values, codes_t, N, gs)
            assert torch.equal(want, group_accumulate(counts, codes, gs))
            got = cb.accumulate_cuda(row_ptr, channels, values, codes_t, N, gs, group_ptr=group_ptr)
            assert got.dtype == torch.int32 and got.shape == want.shape
            assert torch.equal(got.to(torch.int64), want), (N, D, O, gs, silent)
            got = cb.accumulate_cuda(row_ptr, channels, values, codes_t, N, gs)  # group_ptr in torch
            assert torch.equal(got.to(torch.int64), want), (N, D, O, gs, silent)


def test_accumulate_kernel_refuses_int32_overflow(runner):
    counts = torch.zeros(2, 130, dtype=torch.int32, device=runner.device)
    counts[1, 3] = 2**31 // (127 * 128) + 1
    codes_t = random_codes(130, 8, runner.device, seed=1).t().contiguous()
    row_ptr, channels, values = cb.compact_cuda(counts)
    with pytest.raises(cb.KernelInputError, match="overflow"):
        cb.accumulate_cuda(row_ptr, channels, values, codes_t, 2, 128)


def test_accumulate_kernel_rejects_bad_inputs(runner):
    codes_t = random_codes(10, 8, runner.device, seed=1).t().contiguous()
    row_ptr, channels, values = cb.compact_cuda(sparse_counts(2, 10, torch.int8, runner.device, 0))
    with pytest.raises(cb.KernelInputError, match="row_ptr"):
        cb.accumulate_cuda(row_ptr[:-1], channels, values, codes_t, 2, 4)
    with pytest.raises(cb.KernelInputError, match="values"):
        cb.accumulate_cuda(row_ptr, channels, values.to(torch.int64), codes_t, 2, 4)
    with pytest.raises(cb.KernelInputError, match="contiguous"):
        cb.accumulate_cuda(row_ptr, channels, values, codes_t.t(), 2, 4)


# --------------------------------------------------------------- the engine's entry point
def spiking_layer(in_f, out_f, coding, group_size, seed, device):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_f, out_f)
    return SpikingLinear.from_linear(lin, group_size=group_size, coding=coding).to(device)


@pytest.mark.parametrize("coding", CODINGS)
def test_accumulate_events_matches_the_event_walk(runner, coding):
    for i, (N, D, O, gs) in enumerate(runner.sizes(gpu=[(1, 3584, 2064, 128), (37, 130, 257, 64)],
                                                   emulated=[(1, 130, 48, 64), (9, 200, 20, 128)])):
        layer = spiking_layer(D, O, coding, gs, seed=i, device=runner.device)
        x = activations(N, D, torch.float32, runner.device, seed=i, silent=0.5)
        if coding == "binary":
            x = x.abs()
        counts, _ = layer.spike(x)
        T = num_steps(counts, coding)
        acc, pos, neg = cb.accumulate_events(counts, layer, T)
        codes_t = layer.weight_codes.t().contiguous()
        want, wpos, wneg = accumulate_events_torch(counts.cpu(), codes_t.cpu(), gs, coding, T)
        assert acc.dtype == torch.int64 and acc.device == counts.device
        assert torch.equal(acc.cpu(), want), (coding, N, D, O)
        assert (pos, neg) == (wpos, wneg)


def test_accumulate_events_splits_off_counts_beyond_int32(runner):
    # Counts past the int32 kernel's bound: the kernel takes them clamped, the rest is
    # added in int64 (no int64 group_accumulate fallback), and the sums stay exact.
    layer = spiking_layer(130, 12, "bitwise", 128, seed=3, device=runner.device)
    counts = sparse_counts(3, 130, torch.int32, runner.device, seed=2, peak=300_000)
    assert not cb.int32_safe(int(counts.abs().max()), 128)
    T = num_steps(counts, "bitwise")
    launches = len(runner.emulator.launches) if runner.emulator else 0
    acc, pos, neg = cb.accumulate_events(counts, layer, T)
    assert acc.dtype == torch.int64
    assert torch.equal(acc.cpu(), group_accumulate_reference(counts.cpu(), layer.weight_codes.cpu(), 128))
    assert (pos, neg) == cb.event_counts(counts.cpu(), "bitwise", T)
    if runner.emulator is not None:
        assert any("event_accumulate_kernel" in n for n in runner.emulator.launches[launches:])


@pytest.mark.parametrize("coding", CODINGS)
def test_layer_outputs_with_massive_channels_equal_the_integer_path(runner, coding):
    # A few channels at 100-1000x the others, as pretrained LLMs have: counts in the
    # thousands (past the CPU's float32 bound), and for bitwise past the int32 one too.
    D, O, gs = runner.sizes(gpu=(3584, 2064, 128), emulated=(400, 24, 64))
    layer = spiking_layer(D, O, coding, gs, seed=7, device=runner.device)
    x = activations(6, D, torch.float32, runner.device, seed=7, silent=0.3)
    x[:, 3] *= 1000
    x[:, 11] *= 100
    if coding == "binary":
        x = x.abs()
    counts, v_th = layer.spike(x)
    assert int(counts.abs().max()) > 700
    if coding == "bitwise":   # beyond int32 for the kernel: exercise the split too
        counts = counts.to(torch.int64)
        counts[2, 5] = 3_000_000
    y = cb.layer_outputs(counts, v_th, layer, torch.float32)
    want = layer.forward_counts(counts.cpu(), v_th.cpu(), torch.float32) if not runner.gpu else \
        layer.forward_counts(counts, v_th, torch.float32)
    assert torch.equal(y.cpu(), want.cpu())
    acc, pos, neg = cb.accumulate_events(counts, layer, num_steps(counts, coding))
    assert torch.equal(acc.cpu(), group_accumulate_reference(counts.cpu(), layer.weight_codes.cpu(), gs))
    from sbsnn.sim import summarize

    s = summarize(counts.cpu(), coding)
    assert (pos, neg) == (s.events_pos, s.events_neg)


TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1, 3],
            sliding_window=4, rope_theta=10000.0, gate_low_rank_dim=16)


def tiny_spiking_model(coding, group_size):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = HybridForCausalLM(HybridConfig(**TINY))
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * r if "norm" in name else 0.2 * r)
    return convert(model.eval(), "paper", coding=coding, group_size=group_size)


@pytest.mark.parametrize("coding", ["ternary", "bitwise", "twos_complement"])
def test_simulate_cupy_equals_torch(runner, coding):
    # Same device, same integers, same rescale: the logits are identical, not just close.
    snn = tiny_spiking_model(coding, group_size=16).to(runner.device)
    ids = torch.tensor([[3, 10, 200, 7, 7, 65, 66, 67, 1, 0, 255]])
    a = simulate(snn, ids, backend="cupy")
    b = simulate(snn, ids, backend="torch")
    assert a.backend == "cupy" and b.backend == "torch"
    assert torch.equal(a.logits, b.logits)
    for name, ca in a.layers.items():
        cb_ = b.layers[name]
        assert (ca.events_pos, ca.events_neg, ca.nonzero) == (cb_.events_pos, cb_.events_neg, cb_.nonzero), name
    with torch.no_grad():
        assert torch.equal(a.logits, snn(ids.to(runner.device))[0].float().cpu())
    if runner.emulator is not None:
        assert any("event_accumulate_kernel" in n for n in runner.emulator.launches)
    # traces on the cupy backend equal the torch backend's
    t_a = simulate(snn, ids, backend="cupy", trace="model.layers.1.mlp.*").traces
    t_b = simulate(snn, ids, backend="torch", trace="model.layers.1.mlp.*").traces
    for name in t_b:
        for ca, cb_ in zip(t_a[name].calls, t_b[name].calls):
            assert torch.equal(ca.outputs, cb_.outputs) and torch.equal(ca.events_pos, cb_.events_pos)


# ------------------------------------------------------------- the references, on the CPU
@pytest.mark.parametrize("N,D", [(1, 1), (3, 5), (257, 130), (4, 3584), (2, 9)])
def test_spike_counts_reference_is_sbsnn_neurons(N, D):
    x = activations(N, D, torch.float32, "cpu", seed=N * D)
    want, v_want = spike_counts(x, 3.0, dtype=torch.int16)
    got, v_got = cb.spike_counts_reference(x, 3.0, torch.int16)
    assert torch.equal(v_got, v_want)
    assert torch.equal(got, want)
    again, _ = cb.spike_counts_reference(x, 3.0, torch.int16, v_th=v_got)
    assert torch.equal(again, want)


def test_spike_counts_reference_raises_on_overflow():
    x = torch.zeros(1, 300)
    x[0, 0] = 1.0
    with pytest.raises(cb.KernelInputError):
        cb.spike_counts_reference(x, 3.0, torch.int8)


@pytest.mark.parametrize("gs", [1, 7, 64, 128])
def test_compact_reference_is_the_nonzero_list(gs):
    counts = sparse_counts(5, 130, torch.int8, "cpu", seed=gs)
    counts[2] = 0
    row_ptr, channels, values, group_ptr = cb.compact_reference(counts, gs)
    for n in range(5):
        nz = counts[n].nonzero().flatten()
        s, e = int(row_ptr[n]), int(row_ptr[n + 1])
        assert torch.equal(channels[s:e].long(), nz)
        assert torch.equal(values[s:e], counts[n, nz].int())
        for g in range(group_ptr.shape[1] - 1):
            lo, hi = int(group_ptr[n, g]), int(group_ptr[n, g + 1])
            assert torch.equal(channels[lo:hi].long(), nz[(nz >= g * gs) & (nz < (g + 1) * gs)])
        assert int(group_ptr[n, -1]) == e
    assert torch.equal(group_ptr, cb.group_ptr_reference(row_ptr, channels, 130, gs))


@pytest.mark.parametrize("N,D,O,gs", [(1, 1, 3, 128), (3, 130, 17, 64), (4, 200, 9, 128), (2, 5, 4, 2)])
def test_accumulate_reference_is_group_accumulate(N, D, O, gs):
    counts = sparse_counts(N, D, torch.int16, "cpu", seed=D, peak=1000)
    codes = random_codes(D, O, "cpu", seed=O)
    row_ptr, channels, values = cb.compact_reference(counts)
    got = cb.accumulate_reference(row_ptr, channels, values, codes.t().contiguous(), N, gs)
    assert torch.equal(got, group_accumulate(counts, codes, gs))


@pytest.mark.parametrize("coding", CODINGS)
def test_event_counts_match_the_event_walk(coding):
    for seed, peak in ((0, 3), (1, 40), (2, 1000)):
        counts = sparse_counts(6, 50, torch.int16, "cpu", seed=seed, peak=peak)
        if coding == "binary":
            counts = counts.abs()
        T = num_steps(counts, coding)
        codes_t = random_codes(50, 4, "cpu", seed=seed).t().contiguous()
        acc, pos, neg = accumulate_events_torch(counts, codes_t, 16, coding, T)
        assert cb.event_counts(counts, coding, T) == (pos, neg)
        for extra in (1, 3):  # a longer T than needed (a call's global T)
            _, pos2, neg2 = accumulate_events_torch(counts, codes_t, 16, coding, T + extra)
            assert cb.event_counts(counts, coding, T + extra) == (pos2, neg2)


@pytest.mark.parametrize("coding", CODINGS)
def test_accumulate_events_reference_matches_the_engine(coding):
    layer = spiking_layer(70, 11, coding, 32, seed=5, device="cpu")
    x = activations(6, 70, torch.float32, "cpu", seed=5, silent=0.6)
    if coding == "binary":
        x = x.abs()
    counts, _ = layer.spike(x)
    T = num_steps(counts, coding)
    got = cb.accumulate_events_reference(counts, layer, T)
    want = accumulate_events_torch(counts, layer.weight_codes.t().contiguous(), 32, coding, T)
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]


def test_popcount64_covers_every_bit_pattern():
    vals = [0, 1, 2, 3, 255, 2**62, 2**63 - 1, -1, -2, -(2**63), 12345678901234]
    t = torch.tensor(vals, dtype=torch.int64)
    want = [bin(v & (2**64 - 1)).count("1") for v in vals]
    assert cb._popcount64(t).tolist() == want


def test_module_imports_without_cupy_and_checks_devices():
    x = torch.randn(2, 3)
    with pytest.raises(cb.KernelInputError, match="CUDA"):
        cb.spike_counts_cuda(x, 3.0)
    with pytest.raises(cb.KernelInputError, match="int8 or torch.int16"):
        cb.spike_counts_cuda(x, 3.0, torch.int32)
    with pytest.raises(cb.KernelInputError, match="2-D"):
        cb.compact_cuda(torch.zeros(3, dtype=torch.int8))


def test_sentinels_are_never_valid_outputs():
    # The poison must differ from anything a kernel writes for the tests' inputs.
    assert SENTINEL[torch.int8] < -127 and SENTINEL[torch.int16] < -32767
    assert math.isnan(SENTINEL[torch.float32])
