"""Benchmarks behind ``vidhash bench ...``: each module has ``run(args)``, ``args`` carrying the
command's flags as attributes (the flags themselves: :mod:`vidhash.cli.bench`)."""
import platform


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
