"""Files as a user expects them: written atomically, with the user's umask, and with
temporary names a killed run can be recognised by.

- :func:`atomic_file` writes one file under a temporary name beside it and renames it into
  place; :func:`write_atomically` does the same for a set of files in one directory
  (written into a hidden temporary folder, then moved in, the file that marks a complete
  output last). ``os.replace`` is atomic on one file system, so a killed run leaves the
  previous output or none, never a half-written one.
- :class:`atomic_directory` builds a whole directory under a temporary name beside it and
  renames it into place, setting a previous one aside until the new one is in.
- :func:`jsonable` turns the values sbsnn puts into its JSON files (tensors and numpy
  scalars, tuples, paths, NaN) into plain JSON values.

- ``tempfile.mkdtemp`` makes 0700 directories and the ``safetensors`` writer 0600 files;
  renamed into place they would leave outputs only their owner can read.
  :func:`make_dir` creates directories with ``mkdir(0o777)`` (the kernel applies the
  umask) and :func:`apply_umask` gives a written file the mode a plain ``open`` would.
  The umask is read from ``/proc/self/status`` where Linux provides it, else probed by
  creating a file: never with ``os.umask``, whose set-and-restore is process-wide state
  (another thread creating a file in between would get the wrong mode).
- Temporary names carry the host and process id (``.NAME.partial-HOST-PID-XXXXXXXX``);
  :func:`stale_entries` finds those whose process is gone (SIGKILL, power loss), so a
  rerun removes what a killed run left instead of accumulating it.

Imports nothing of sbsnn but :mod:`sbsnn.errors`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from sbsnn.errors import PathExistsError, PathNotDirectoryError, os_error

__all__ = ["apply_umask", "atomic_directory", "atomic_file", "current_umask", "ensure_output_dir",
           "jsonable", "make_dir", "remove_stale", "stale_entries", "temp_name", "write_atomically"]


def _umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _umask_by_probe() -> int:
    """Create a file asking for mode 0o777 and see what the kernel granted."""
    d = tempfile.mkdtemp(prefix=".sbsnn-umask-")
    try:
        p = os.path.join(d, "probe")
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o777)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return 0o777 & ~mode
    finally:
        shutil.rmtree(d, ignore_errors=True)


def current_umask() -> int:
    """The process's umask, read without changing it."""
    m = _umask_from_proc()
    return _umask_by_probe() if m is None else m


def apply_umask(path, umask: int | None = None) -> None:
    """Give ``path`` the permission bits a plain create would have given it
    (``0o666 & ~umask`` for a file, ``0o777 & ~umask`` for a directory)."""
    mask = current_umask() if umask is None else umask
    p = Path(path)
    base = 0o777 if p.is_dir() else 0o666
    os.chmod(p, base & ~mask)


def apply_umask_tree(root, umask: int | None = None) -> None:
    """:func:`apply_umask` on ``root`` and everything below it."""
    mask = current_umask() if umask is None else umask
    apply_umask(root, mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            apply_umask(os.path.join(dirpath, n), mask)


_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname() or "host")[:40]


def temp_name(name: str, kind: str = "partial") -> str:
    """``.NAME.KIND-HOST-PID-TOKEN``: a hidden name that says which process made it."""
    return f".{name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def make_dir(parent, name: str, kind: str = "partial") -> Path:
    """A new, uniquely named temporary directory in ``parent`` (see :func:`temp_name`),
    with the user's umask applied by the kernel."""
    for _ in range(100):
        p = Path(parent) / temp_name(name, kind)
        try:
            os.mkdir(p, 0o777)
            return p
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: cannot create a temporary directory for {name}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's process: alive
        return True
    except OSError:
        return True
    return True


def stale_entries(parent, name: str, kind: str = "partial") -> list[Path]:
    """Entries of ``parent`` named by :func:`temp_name` for ``name`` and ``kind`` whose
    process ran on this host and is gone."""
    pat = re.compile(rf"^\.{re.escape(name)}\.{re.escape(kind)}-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{8}}$")
    out = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return out
    for p in entries:
        m = pat.match(p.name)
        if m and m["host"] == _HOST and not _alive(int(m["pid"])):
            out.append(p)
    return sorted(out)


def remove_stale(parent, name: str, kind: str = "partial") -> list[Path]:
    """Remove what :func:`stale_entries` finds; returns the paths removed."""
    gone = []
    for p in stale_entries(parent, name, kind):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                continue
        gone.append(p)
    return gone


# ============================================================================ atomic writes
def ensure_output_dir(path, what: str = "the output directory", hint: str = "") -> Path:
    """``path`` as a directory, created if missing; a file there, or a directory that cannot
    be created, is refused as a :class:`~sbsnn.errors.PathError` naming ``what``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise PathNotDirectoryError(f"{out}: {what} is a file; give a directory{hint}",
                                    filename=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, out, f"creating {what}") from None
    return out


@contextmanager
def atomic_file(path) -> Iterator[Path]:
    """``with atomic_file(path) as tmp:`` write the file ``tmp`` (a hidden
    :func:`temp_name` beside ``path``); on success it replaces ``path``, on any error or
    interruption it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# What sbsnn wrote into an output directory by write_atomically (a report, a sweep, the
# demo): name -> SHA-256 digests. A file of the same name that is not in it is the user's.
OUTPUTS_MANIFEST = "sbsnn-outputs.json"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def owned_outputs(out_dir) -> dict[str, list[str]]:
    """What sbsnn wrote into ``out_dir``: file name -> the SHA-256 digests it may hold
    (the directory's ``sbsnn-outputs.json``; empty if none)."""
    try:
        d = json.loads((Path(out_dir) / OUTPUTS_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(d, dict):
        return {}
    return {k: [x for x in v if isinstance(x, str)] for k, v in d.items()
            if isinstance(k, str) and isinstance(v, list)}


def check_replaceable(out_dir, names) -> None:
    """Each of ``names`` that exists in ``out_dir`` must be a file sbsnn wrote there, with
    the content it wrote (its manifest): a file of the user's is never replaced or removed.
    Else :class:`~sbsnn.errors.PathExistsError` naming it."""
    out = Path(out_dir)
    owned = owned_outputs(out)
    for n in names:
        p = out / n
        if not (p.exists() or p.is_symlink()):
            continue
        if p.is_symlink() or not p.is_file() or _sha256(p) not in owned.get(n, ()):
            raise PathExistsError(f"{p}: a file sbsnn did not write there (or one changed since "
                                  f"it did, or written before sbsnn kept {OUTPUTS_MANIFEST}); "
                                  "sbsnn replaces only its own outputs: move it away or choose "
                                  "another output directory", filename=p)


def _write_manifest(out: Path, owned: dict[str, list[str]]) -> None:
    with atomic_file(out / OUTPUTS_MANIFEST) as tmp:
        tmp.write_text(json.dumps(owned, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def record_outputs(out_dir, names) -> None:
    """Add ``names`` (files just written into ``out_dir``) to its manifest."""
    out = Path(out_dir)
    owned = owned_outputs(out)
    owned.update({n: [_sha256(out / n)] for n in names})
    _write_manifest(out, owned)


def write_atomically(out_dir, write: Callable[[Path], list[str]], final: str | None = None,
                     remove_first: tuple[str, ...] = ()) -> list[Path]:
    """Call ``write(tmp_dir)`` (it writes files there and returns their names), then move
    them into ``out_dir`` (created if missing): the names in ``remove_first`` are deleted
    before anything is moved, and ``final`` is moved last. Returns the final paths.

    Only files sbsnn wrote there may be replaced or removed (:func:`check_replaceable`,
    before any work and again before anything moves); while they move, the manifest lists
    the new content beside the old, so that a run killed half-way is replaced by the next.

    ``tmp_dir`` is a hidden ``.sbsnn.partial-HOST-PID-XXXXXXXX`` folder inside ``out_dir``,
    removed on the way out; one a killed run left is removed on entry."""
    out = ensure_output_dir(out_dir, hint=" (it is created if missing)")
    check_replaceable(out, remove_first)
    try:
        remove_stale(out, "sbsnn", "partial")      # what a killed run left
        tmp = make_dir(out, "sbsnn", "partial")
    except OSError as e:
        raise os_error(e, out, "creating the output directory") from None
    try:
        names = list(write(tmp))
        check_replaceable(out, set(names) | set(remove_first))
        owned = owned_outputs(out)
        for n in names:        # old and new content both sbsnn's while they move
            owned[n] = sorted(set(owned.get(n, [])) | {_sha256(tmp / n)})
        _write_manifest(out, owned)
        for n in remove_first:
            (out / n).unlink(missing_ok=True)
        ordered = [n for n in names if n != final] + [n for n in names if n == final]
        for n in ordered:
            os.replace(tmp / n, out / n)
        record_outputs(out, ordered)
        return [out / n for n in ordered]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class atomic_directory:
    """``with atomic_directory(out) as tmp:`` write into ``tmp``; on success it becomes
    ``out`` (a previous ``out`` is set aside, then removed), on failure it is removed.

    ``tmp`` is ``.OUT.partial-HOST-PID-XXXXXXXX`` beside ``out`` (:func:`temp_name`), made
    with the user's umask. On entry, what a killed run left for the same ``out`` is cleaned
    up: its partial directories are removed, and a previous ``out`` set aside during a
    replacement that was cut short is put back (or removed if ``out`` exists); then
    ``check(out)``, if given, may refuse the output.
    """

    def __init__(self, out, check: Callable[[Path], None] | None = None):
        self.out, self.check = Path(out), check

    def __enter__(self) -> Path:
        parent = self.out.parent
        _clean_leftovers(self.out)
        if self.check is not None:
            self.check(self.out)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = make_dir(parent, self.out.name, "partial")
        except OSError as e:
            raise os_error(e, parent, "creating the output directory") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        try:
            if self.out.exists():
                old = self.out.with_name(temp_name(self.out.name, "old"))
                os.replace(self.out, old)
            os.replace(self.tmp, self.out)
        except BaseException:
            if old is not None and not self.out.exists():
                os.replace(old, self.out)     # put the previous output back
                old = None
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _clean_leftovers(out: Path) -> None:
    parent = out.parent
    remove_stale(parent, out.name, "partial")
    for old in stale_entries(parent, out.name, "old"):
        if not out.exists():          # killed between the two renames: the old one is whole
            os.replace(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)


def jsonable(x: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, tuples lists, one-element tensors
    and numpy scalars numbers, paths and anything else strings."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item"):                 # torch tensors, numpy scalars
        return jsonable(x.item())
    return str(x)
