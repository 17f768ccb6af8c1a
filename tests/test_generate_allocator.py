"""vidhash.generate.keep_freed_memory: freed large blocks are reused, not mapped (and faulted in) again."""
import platform
import resource

import pytest
import torch

from vidhash.generate import keep_freed_memory


def faults_of_reallocating(mib: int, times: int = 20) -> int:
    """Minor page faults of allocating, touching and freeing ``mib`` MiB ``times`` times, after a
    first round (which faults in any case)."""
    torch.ones(mib << 18).sum()  # (mib MiB of float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        torch.ones(mib << 18).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_large_blocks():
    # 48 MiB: above glibc's adaptive mmap threshold (at most 32 MiB), so mapped anew every time by default
    assert keep_freed_memory()
    pages = (48 << 20) // 4096
    assert faults_of_reallocating(48) < pages  # by default ≥ 20 × 12,288 faults: every page, every time
