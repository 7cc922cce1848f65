"""Every file moesim writes: checked before the work starts, then written all-or-nothing.

A user who waited minutes for a plan must not lose it to a typo in `-o`, and a failed run must
leave no partial file. So each output path is checked when the command line is read (its folder
exists, is a folder and takes a new file, the name has a suffix moesim can write), and the file
is written to a temporary name in the same folder, then renamed. Folders are never created on
the user's behalf: a missing one is an error that names it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from moesim.core.errors import MoesimError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path: str | Path, *, field: str, suffixes: Optional[Iterable[str]] = None) -> Path:
    """The path, if a file can be written there now; else a MoesimError naming `field` and the fix.

    Writability is probed by creating and removing a temporary file in the folder: permission
    bits alone do not tell (root ignores them; a read-only mount does not).
    """
    target = Path(path)
    if not str(path).strip():
        raise MoesimError("the output path is empty", field=field, fix="give a file name")
    allowed = [s.lower() for s in suffixes] if suffixes is not None else None
    if allowed is not None and target.suffix.lower() not in allowed:
        shown = repr(target.suffix) if target.suffix else "no suffix"
        raise MoesimError(f"{target}: cannot write a file with {shown}", field=field,
                          fix=f"name it with one of: {', '.join(allowed)}")
    if target.is_dir():
        raise MoesimError(f"{target} is a folder", field=field, fix="give a file name inside it")
    folder = target.parent
    if not folder.exists():
        raise MoesimError(f"folder {folder} does not exist", field=field,
                          fix=f"create it first (mkdir -p {folder}) or write elsewhere")
    if not folder.is_dir():
        raise MoesimError(f"{folder} is a file, not a folder", field=field, fix="choose a path inside a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise MoesimError(f"cannot write in {folder} ({exc.strerror})", field=field,
                          fix="choose a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)
    if target.exists() and not os.access(target, os.W_OK):
        raise MoesimError(f"{target} exists and cannot be replaced", field=field,
                          fix="choose another name or make the file writable")
    return target


def check_output_folder(path: str | Path, *, field: str) -> Path:
    """A folder moesim may fill (a cache): it exists, or its parent does and takes a new folder."""
    folder = Path(path)
    if folder.exists():
        if not folder.is_dir():
            raise MoesimError(f"{folder} is a file, not a folder", field=field, fix="give a folder path")
        check_output_path(folder / "probe", field=field)
        return folder
    check_output_path(folder, field=field)
    return folder


def write_atomic(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) to `path` so that readers see either the old file or the whole new one."""
    return write_atomic_bytes(path, text.encode())


def write_atomic_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to `path` all-or-nothing: a temporary file in the same folder, then a rename.

    The folder must exist (see the module docstring); an OS error becomes one MoesimError line.
    """
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise MoesimError(f"cannot write {target} ({exc.strerror})", field="output",
                          fix="write to an existing folder you can write to") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MoesimError(f"cannot write {target} ({exc.strerror})", field="output",
                          fix="write to an existing folder you can write to, with room on its disk") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
