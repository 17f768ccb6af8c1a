"""Small helpers for files written atomically (temp file in the same folder, then rename)."""
from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Callable


def umask() -> int:
    """The process's file-creation mask (read without changing it). ``tempfile.mkstemp`` makes
    files 0600; a file renamed into place gets ``0o666 & ~umask()``, as ``open`` would give it."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else the closest folder above it that does (what a
    ``mkdir(parents=True)`` would build on: it must be a folder)."""
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check, before any work, that the file ``path`` given with ``flag`` (``--json``) can be written:
    it is not a directory, its folder exists (it is not created) and is a folder, and a file can be
    created in it — probed with a temporary file, created and removed at once (``os.access`` says yes
    to root even where nothing can be created, e.g. ``/proc``). ValueError naming the flag and the
    path as given."""
    given = str(path)
    if not given:  # (Path("") is the current folder)
        raise ValueError(f"{flag} is an empty path; give a file path".lstrip())
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {given} is a directory; give a file path")
    folder = path.parent
    if not folder.exists():
        raise ValueError(f"{flag} {given}: folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{flag} {given}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-probe-")
    except OSError as err:
        raise ValueError(f"{flag} {given}: cannot create a file in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """``write(tmp)`` into a temporary file in ``path``'s folder (same suffix as ``path``: writers
    such as matplotlib's ``savefig`` pick the format from it), given the usual permissions
    (``0o666 & ~umask()``; mkstemp makes 0600), then renamed to ``path``: never a half file. The
    temporary file is removed on failure; an OSError names ``path``, not the temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(str(path))[1])
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.remove(tmp)


def finite_json(obj):
    """``obj`` (dicts, lists, tuples, numbers, ...) with every non-finite float (``inf``, ``nan``) as
    None: what ``json.dump(..., allow_nan=False)`` accepts, so the file is standard JSON (``Infinity``
    and ``NaN`` are Python's extension, which strict parsers refuse)."""
    if isinstance(obj, float) or (isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral)):
        return float(obj) if math.isfinite(obj) else None  # (numpy's floats too)
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj, **dump_kw) -> None:
    """``obj`` as standard JSON at ``path`` through :func:`write_atomic` (never a half-written file):
    every non-finite float (``inf``, ``nan``; numpy's too, and what a ``default=`` hook returns) is
    written as null (:func:`finite_json`), never as Python's ``Infinity`` / ``NaN``, which strict
    parsers refuse. ``dump_kw`` go to ``json.dump`` (``allow_nan`` is False unless given: anything
    left non-finite fails before ``path`` is touched)."""
    obj = finite_json(obj)
    default = dump_kw.get("default")
    if default is not None:
        dump_kw["default"] = lambda value: finite_json(default(value))
    dump_kw = {"allow_nan": False, **dump_kw}

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, **dump_kw)
            f.write("\n")

    write_atomic(path, write)
