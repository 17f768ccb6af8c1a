"""World-model memory evaluation (``vidhash eval world``); work in progress."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="saved pipeline folder, or random-tiny")


def run(args: argparse.Namespace) -> int:
    raise ValueError("vidhash eval world is not finished yet")
