"""Files as a user expects them: the user's umask on what sbsnn writes, and temporary
directories a killed run can be recognised by.

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

Imports nothing of sbsnn's rooms.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from pathlib import Path

__all__ = ["apply_umask", "current_umask", "make_dir", "remove_stale", "stale_entries",
           "temp_name"]


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
