"""The house: the rooms import one way, no module imports itself back, ``import sbsnn`` stays
light, and the deprecated aliases still reach the rooms they name.

The rules are those of ``docs/architecture.md`` (and ``../shared/design.md``): imports run
``cli -> runs -> analysis, sim, converters, models``; ``sim -> converters, neurons``;
``converters -> neurons, models``; ``analysis -> sim, neurons, models``, never
``converters``; ``neurons`` and ``models`` import nothing of sbsnn but the ground floor
(``errors``, ``checks``, ``fsutil``), which imports nothing else of sbsnn. Every import
counts, also one inside a function: it is an edge of the house all the same.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sbsnn"
GROUND = {"errors", "checks", "fsutil"}
# room -> the rooms it may import ("root": ``from sbsnn import __version__``)
ALLOWED = {
    "ground": {"root"},
    "data": set(),
    "neurons": {"ground", "root"},
    "models": {"ground", "root", "data"},
    "converters": {"ground", "root", "data", "neurons", "models"},
    "sim": {"ground", "root", "neurons", "models", "converters"},
    "analysis": {"ground", "root", "neurons", "models", "sim"},
    "runs": {"ground", "root", "data", "neurons", "models", "converters", "sim", "analysis"},
    "cli": {"ground", "root", "data", "neurons", "models", "converters", "sim", "analysis",
            "runs"},
    "__main__": {"cli"},
    "dist": {"runs"},                  # deprecated aliases of sbsnn.runs and sbsnn.runs.demo
    "demo": {"runs", "data"},
    "root": set(),                     # sbsnn/__init__.py imports its rooms lazily, by name
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(("sbsnn",) + f.relative_to(PACKAGE).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return "ground" if parts[1] in GROUND else parts[1]


def _imports(path: Path, top_only: bool = False):
    """``(line, module imported)`` for every absolute sbsnn import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in (tree.body if top_only else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "sbsnn":
            for alias in node.names:
                yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sbsnn":
                    yield node.lineno, alias.name, None


def test_rooms_import_one_way():
    modules = _modules()
    assert len(modules) > 60 and {_room(m) for m in modules} >= set(ALLOWED) - {"__main__"}
    wrong = []
    for name, path in modules.items():
        here = _room(name)
        for line, target, _ in _imports(path):
            there = _room(target)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {target}")
    assert not wrong, "imports against the house's direction:\n" + "\n".join(wrong)


def test_no_module_imports_itself_back():
    """No circle of modules, counting imports inside functions too (a circle hidden in a
    function is still a circle a reader has to untangle)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for _, target, attr in _imports(path):
            sub = f"{target}.{attr}" if attr else None
            dest = sub if sub in modules else target if target in modules else None
            if dest is not None and dest != name:
                graph[name].add(dest)
    circles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                circles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_private_name_crosses_a_room():
    """A name with a leading underscore is its room's own business: another room that
    needs it gets a public name instead."""
    crossing = []
    for name, path in _modules().items():
        for line, target, attr in _imports(path):
            if attr and attr.startswith("_") and not attr.startswith("__") \
                    and _room(target) != _room(name):
                crossing.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}.{attr}")
    assert not crossing, "private names imported across rooms:\n" + "\n".join(crossing)


def test_the_rule_checker_sees_a_wrong_import(tmp_path):
    """The two checks above would fail on a house that broke its rules."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sbsnn.converters.convert import convert\n")
    here = "analysis"
    found = [t for _, t, _ in _imports(bad) if _room(t) not in ALLOWED[here] | {here}]
    assert found == ["sbsnn.converters.convert"]
    assert list(_imports(bad, top_only=True)) == []      # hidden in a function, still seen above


def test_import_sbsnn_is_light():
    """``import sbsnn`` loads no torch and takes well under 50 ms (its own import time, as
    ``python -X importtime`` measures it, best of three fresh interpreters)."""
    code = ("import sys, sbsnn; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    best = None
    for _ in range(3):
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                           text=True, cwd=PACKAGE.parent, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        line = [ln for ln in r.stderr.splitlines() if ln.rstrip().endswith("| sbsnn")][-1]
        micros = int(line.split("|")[1])        # cumulative: sbsnn and everything it imported
        best = micros if best is None else min(best, micros)
    assert best < 50_000, f"import sbsnn took {best / 1000:.1f} ms"


@pytest.mark.parametrize("alias, room, names", [
    ("sbsnn.dist", "sbsnn.runs", ["simulate_documents", "sweep_documents", "load_documents",
                                  "process_group"]),
    ("sbsnn.dist.pipeline", "sbsnn.runs.pipeline", ["simulate_pipeline", "stage_forward"]),
    ("sbsnn.dist.simulate", "sbsnn.runs.simulate", ["simulate_documents", "DocumentCounters"]),
    ("sbsnn.demo", "sbsnn.runs.demo", ["run_demo"]),
])
def test_deprecated_aliases_reach_the_same_objects(alias, room, names):
    import importlib

    package = ".".join(alias.split(".")[:2])        # sbsnn.dist or sbsnn.demo, and its aliases
    for m in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        sys.modules.pop(m)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module(alias)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    new = importlib.import_module(room)
    for n in names:
        assert getattr(old, n) is getattr(new, n), n
