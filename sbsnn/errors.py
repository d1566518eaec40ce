"""sbsnn's errors: one class per failure class, all under :class:`SbsnnError`.

Each class also derives from the builtin a caller would catch for that failure
(``ValueError`` for a bad value, ``FileNotFoundError`` for a missing path, ...), so code
written against the builtins keeps working. Every message names the file, tensor, layer or
option at fault and says what would fix it. The ``sbsnn`` command prints such an error on
one line and exits with status 2 (``--debug`` shows the traceback).

This module imports nothing: every room of sbsnn (models and neurons included) may raise
these.

=======================  ==========================================================
class                    failure class
=======================  ==========================================================
OptionError              an option or argument: type, range, or a combination
                         (``--block-size -5``; a source and output that overlap)
LimitError               a value that would make a run absurdly long or large,
                         refused with the bound and its reason (``--k 1e9``)
UnavailableError         something not available here: a usable GPU for the CuPy
                         backend, a tokenizer, an optional package
InputError               the content of an input file: text that is not UTF-8, a
                         document set, a fidelity JSON, an energy profile
CheckpointError          a checkpoint that cannot be used (the tensors of a model)
ConfigError              its ``config.json``: a field missing, invalid or unknown
SafetensorsError         a weights file a reference reader rejects (header, offsets,
                         dtypes, shards and their index)
CheckpointKindError      a spiking checkpoint where a float one is expected, or the
                         reverse
IntegrityError           a spiking checkpoint that fails verification (a content
                         digest, weight codes outside [-127, 127], bad scales)
RecordingError           a recording (HDF5) that is not, or no longer, readable
NonFiniteError           NaN or Inf, naming the layer and whether it came from the
                         weights or the activations
PathError                the operating system refused a path; subclasses by kind:
                         MissingPathError, PathExistsError, PathPermissionError,
                         PathIsDirectoryError, PathNotDirectoryError,
                         PathLoopError, DiskFullError
=======================  ==========================================================
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "CheckpointError", "CheckpointKindError", "ConfigError", "DiskFullError", "InputError",
    "IntegrityError", "LimitError", "MissingPathError", "NonFiniteError", "OptionError",
    "PathError", "PathExistsError", "PathIsDirectoryError", "PathLoopError",
    "PathNotDirectoryError", "PathPermissionError", "RecordingError", "SafetensorsError",
    "SbsnnError", "UnavailableError", "brief", "os_error",
]


class SbsnnError(Exception):
    """Base of every error sbsnn raises on purpose."""


class OptionError(SbsnnError, ValueError):
    """An option or argument of the wrong type, out of range, or in a combination that
    cannot work; the message names the option."""


class LimitError(OptionError):
    """A value refused because the run it asks for would be absurdly long or large; the
    message gives the bound and the reason for it."""


class UnavailableError(SbsnnError, RuntimeError):
    """Something the run asks for is not available here (a usable GPU for the CuPy
    backend, a tokenizer, an optional package); the message says what to install or
    choose instead."""


class InputError(SbsnnError, ValueError):
    """The content of an input file cannot be used; the message names the file (and line)."""


class CheckpointError(SbsnnError, ValueError):
    """A checkpoint or config cannot be used; the message names the file and tensor."""


class ConfigError(CheckpointError):
    """A ``config.json`` field missing, invalid, or not understood."""


class SafetensorsError(CheckpointError):
    """A weights file that the ``safetensors`` library (or ``transformers``) would reject."""


class CheckpointKindError(CheckpointError):
    """A spiking checkpoint given where a float one is expected, or the reverse."""


class IntegrityError(CheckpointError):
    """A spiking checkpoint that fails verification on load."""


class RecordingError(SbsnnError, ValueError):
    """A file that is not (or no longer) a readable sbsnn recording."""


class NonFiniteError(SbsnnError, ValueError):
    """NaN or Inf: ``layer`` names where it was found, ``origin`` is ``"weights"`` or
    ``"activations"``."""

    def __init__(self, message: str, layer: str | None = None, origin: str | None = None):
        super().__init__(message)
        self.layer, self.origin = layer, origin


class PathError(SbsnnError, OSError):
    """The operating system refused a path (``filename`` and ``errno`` are set when known)."""

    def __init__(self, message: str, filename=None, errno: int | None = None):
        super().__init__(message)
        self.filename, self.errno = filename, errno

    def __str__(self) -> str:       # OSError's own formats "[Errno n] ..." from its args
        return self.args[0] if self.args else ""


class MissingPathError(PathError, FileNotFoundError):
    """No such file or directory."""


class PathExistsError(PathError, FileExistsError):
    """The path exists where sbsnn would create it."""


class PathPermissionError(PathError, PermissionError):
    """Permission denied, or a read-only file system."""


class PathIsDirectoryError(PathError, IsADirectoryError):
    """A directory where a file is expected."""


class PathNotDirectoryError(PathError, NotADirectoryError):
    """A file where a directory is expected (the path itself or one of its parents)."""


class PathLoopError(PathError):
    """Too many levels of symbolic links (a link loop)."""


class DiskFullError(PathError):
    """No space left on the device (or a quota or file-size limit) while writing."""


_KINDS = {
    _errno.ENOENT: (MissingPathError, "no such file or directory", "check the path"),
    _errno.EEXIST: (PathExistsError, "already exists", "remove it or choose another path"),
    _errno.EACCES: (PathPermissionError, "permission denied",
                    "check its permissions (and its parent directory's) or choose another path"),
    _errno.EPERM: (PathPermissionError, "operation not permitted",
                   "check its permissions or choose another path"),
    _errno.EROFS: (PathPermissionError, "read-only file system", "choose a writable location"),
    _errno.EISDIR: (PathIsDirectoryError, "is a directory", "give a file"),
    _errno.ENOTDIR: (PathNotDirectoryError, "a part of the path is not a directory",
                     "check the path"),
    _errno.ELOOP: (PathLoopError, "symbolic link loop", "fix the links"),
    _errno.ENAMETOOLONG: (PathError, "file name too long", "choose a shorter path"),
    _errno.ENOSPC: (DiskFullError, "no space left on the device",
                    "free space or write elsewhere, then rerun"),
    _errno.EDQUOT: (DiskFullError, "disk quota exceeded",
                    "free space or write elsewhere, then rerun"),
    _errno.EFBIG: (DiskFullError, "file too large for this file system or limit",
                   "write elsewhere or raise the limit, then rerun"),
}


def os_error(e: OSError, path=None, action: str | None = None) -> OSError:
    """``e`` as the :class:`PathError` subclass of its kind, naming ``path`` (else the
    error's own file name) and what would fix it; a :class:`PathError` is returned as it
    is. ``action`` says what sbsnn was doing ("reading the config", "writing the
    recording")."""
    if isinstance(e, SbsnnError):
        return e
    if e.errno is None and e.filename is None and path is None and str(e):
        # raised with a message of its own (it names the path already): keep it
        cls = next((ours for builtin, ours in (
            (FileNotFoundError, MissingPathError), (FileExistsError, PathExistsError),
            (PermissionError, PathPermissionError), (IsADirectoryError, PathIsDirectoryError),
            (NotADirectoryError, PathNotDirectoryError)) if isinstance(e, builtin)), PathError)
        out = cls(str(e))
        out.__cause__ = e
        return out
    code = e.errno
    if code is None:         # h5py puts the C errno into its message only
        import re

        m = re.search(r"errno = (\d+)", str(e))
        code = int(m.group(1)) if m else (_errno.ENOENT if isinstance(e, FileNotFoundError) else None)
    where = path if path is not None else (e.filename if e.filename is not None else None)
    cls, what, fix = _KINDS.get(code, (PathError, None, None))
    what = what or e.strerror or str(e) or type(e).__name__
    if code is not None and code not in _KINDS and e.strerror:
        what = e.strerror
    msg = f"{os.fspath(where)}: {what}" if where is not None else what
    if action:
        msg += f" ({action})"
    if fix:
        msg += f"; {fix}"
    out = cls(msg, filename=where, errno=code)
    out.__cause__ = e
    return out


def brief(value, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages: a refusal
    stays one readable line even when the value is a whole token array or a long list
    (a list or tuple also says how many items it holds)."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not hide the refusal
        return f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} items)" if isinstance(value, (list, tuple, dict, set)) else ""
    return f"{text[:limit]}...{size}"
