"""Benchmarks behind ``vidhash bench ...``: each module has ``run(args)``, ``args`` carrying the
command's flags as attributes (the flags themselves: :mod:`vidhash.cli.bench`)."""
import os
import platform

OUTPUT_FLAGS = ("json", "strip", "clips", "world_cache", "dropin_cache")
"""Flags naming where a bench writes (or keeps a recording it reads back): its report records them by
file name only (no machine paths)."""


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def recorded_flags(args) -> dict:
    """A bench's flags as its JSON report records them: output paths by file name, the rest as given;
    not the CLI's private entries (``_run``: the command's bound method)."""
    return {k: os.path.basename(v) if k in OUTPUT_FLAGS and isinstance(v, str) else v for k, v in vars(args).items()
            if not k.startswith("_")}
