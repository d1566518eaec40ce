"""Every CUDA source under sbsnn/sim/kernels compiles, for every kernel the backend loads.

No GPU needed: ``nvcc --ptx`` for sm_80 and sm_90 (skipped without nvcc), and, where CuPy
and an NVRTC library are installed, NVRTC itself with the options CuPy's RawModule adds
(the compiler the backend really uses at run time; skipped otherwise).

RawModule instantiates the templates from name expressions; for nvcc a generated wrapper
includes the source and takes the address of each name expression the backend declares
(``cupy_backend.NAME_EXPRESSIONS``), which instantiates exactly those kernels. The test
then checks that each one is a ``.entry`` of the PTX.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sbsnn.sim import cupy_backend

KERNEL_DIR = Path(cupy_backend.__file__).parent / "kernels"
SOURCES = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")


def test_every_source_declares_its_kernels():
    assert SOURCES, f"no .cu files under {KERNEL_DIR}"
    assert set(SOURCES) == set(cupy_backend.NAME_EXPRESSIONS), (
        "each .cu file needs an entry in cupy_backend.NAME_EXPRESSIONS (and no entry "
        "without a file)")
    for name in SOURCES:
        assert cupy_backend.kernel_source(name) == (KERNEL_DIR / name).read_text()


def test_launch_shapes_match_the_sources():
    """The block sizes the wrappers launch with are the ones the kernels are written for."""
    import re

    defines = {}
    for name in SOURCES:
        for key, value in re.findall(r"^#define (\w+) (\d+)\s*$", (KERNEL_DIR / name).read_text(), re.M):
            defines[key] = int(value)
    assert defines["SC_BLOCK"] == cupy_backend.SC_BLOCK
    assert defines["CP_BLOCK"] == cupy_backend.CP_BLOCK
    assert defines["EA_BLOCK"] == cupy_backend.EA_BLOCK
    assert cupy_backend.EA_TILE == 32  # one warp's lanes per output tile


def wrapper_source(source: Path, name_expressions) -> str:
    refs = ",\n".join(f"    (void*)&{e}" for e in name_expressions)
    return (f'#include "{source.resolve()}"\n\n'
            "// Taking each kernel's address instantiates it, as name_expressions do in NVRTC.\n"
            f"void* sbsnn_instantiate[] = {{\n{refs}\n}};\n")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_nvcc_compiles_every_kernel(tmp_path, source, arch):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH (install the CUDA toolkit to run this check)")
    exprs = cupy_backend.NAME_EXPRESSIONS[source]
    wrapper = tmp_path / f"check_{Path(source).stem}.cu"
    wrapper.write_text(wrapper_source(KERNEL_DIR / source, exprs))
    ptx = tmp_path / f"{Path(source).stem}_{arch}.ptx"
    # No --use_fast_math: the counts depend on IEEE division and rint.
    cmd = [nvcc, "--ptx", "-std=c++17", f"-arch={arch}", "-Werror", "all-warnings",
           str(wrapper), "-o", str(ptx)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}{proc.stdout}"
    entries = [line for line in ptx.read_text().splitlines() if ".entry" in line]
    assert len(entries) == len(exprs), (
        f"expected {len(exprs)} kernels ({', '.join(exprs)}) in the PTX, found:\n"
        + "\n".join(entries))


@pytest.mark.parametrize("arch", ARCHS)
def test_no_register_spills(tmp_path, arch):
    """ptxas keeps every kernel in registers (a spill would put local-memory traffic in the
    hot loops; event_accumulate's __launch_bounds__ is sized for this)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH (install the CUDA toolkit to run this check)")
    wrapper = tmp_path / "all.cu"
    wrapper.write_text("".join(wrapper_source(KERNEL_DIR / s, cupy_backend.NAME_EXPRESSIONS[s])
                               .replace("sbsnn_instantiate", f"sbsnn_instantiate_{i}")
                               for i, s in enumerate(SOURCES)))
    cmd = [nvcc, "--cubin", "-std=c++17", f"-arch={arch}", "-Xptxas", "-v", str(wrapper),
           "-o", str(tmp_path / "all.cubin")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    spills = [line for line in proc.stderr.splitlines()
              if "spill" in line and not line.strip().startswith("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads")]
    assert not spills, "\n".join(spills)
    assert proc.stderr.count("Compiling entry function") == sum(map(len, cupy_backend.NAME_EXPRESSIONS.values()))


def _nvrtc():
    """CuPy's NVRTC bindings, if CuPy and an NVRTC library load (no GPU needed)."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception as e:  # noqa: BLE001 - any failure: not available here
        pytest.skip(f"NVRTC is not usable here ({type(e).__name__}: {e}); "
                    "pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12 to run this check")


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_nvrtc_compiles_every_kernel(source, arch):
    nvrtc = _nvrtc()
    exprs = cupy_backend.NAME_EXPRESSIONS[source]
    prog = nvrtc.createProgram(cupy_backend.kernel_source(source), source, [], [])
    try:
        for e in exprs:
            nvrtc.addNameExpression(prog, e)
        # The options RawModule(options=("-std=c++17",)) ends up passing to NVRTC.
        options = ("-std=c++17", "-ftz=true", f"-arch={arch}", "--device-as-default-execution-space")
        try:
            nvrtc.compileProgram(prog, options)
        except Exception as err:  # noqa: BLE001 - report NVRTC's log
            pytest.fail(f"NVRTC failed on {source} ({arch}): {err}\n{nvrtc.getProgramLog(prog)}")
        lowered = {e: nvrtc.getLoweredName(prog, e) for e in exprs}
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)
    for e, mangled in lowered.items():
        assert f".entry {mangled}(" in ptx, f"{e} ({mangled}) missing from the PTX"
