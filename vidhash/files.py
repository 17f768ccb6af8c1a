"""Small helpers for files written atomically (temp file in the same folder, then rename)."""
from __future__ import annotations

import os


def umask() -> int:
    """The process's file-creation mask (read without changing it). ``tempfile.mkstemp`` makes
    files 0600; a file renamed into place gets ``0o666 & ~umask()``, as ``open`` would give it."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
