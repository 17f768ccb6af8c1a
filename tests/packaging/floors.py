"""The lower bounds of pyproject.toml's dependencies as pins, one a line, for the floor check in
.ci/run:  python tests/packaging/floors.py > floors.txt  (then pip install -c floors.txt ...).

Every ``name>=X`` of ``[project] dependencies`` becomes ``name==X.*`` (the newest release of the
floor's series: ``opencv-python-headless>=4.8`` has no release 4.8 itself, and a series' patches
fix builds, not APIs), except the names given with ``--skip`` (torch: PyPI has no CPU wheel of its floor for Linux x86-64; its floor is checked by a recorded run,
docs/log/2026-12-03-torch-floor.md)."""
from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def floors(skip: set[str]) -> list[str]:
    """``name==floor`` for each dependency with a ``>=`` bound, ``skip`` left out."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9.]+)\s*(;.*)?", dep.strip())
        if m is None:
            raise ValueError(f"pyproject.toml dependency {dep!r} has no plain '>=' floor")
        name, version = m.group(1), m.group(2)
        if name not in skip:
            pins.append(f"{name}=={version}.*")
    return pins


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], help="dependencies left at pip's choice")
    print("\n".join(floors(set(parser.parse_args().skip))))
