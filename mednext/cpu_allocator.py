"""glibc's allocator, tuned for the large tensors of 3D networks on the CPU.

torch allocates CPU tensors with ``malloc``. glibc serves every block above its mmap threshold
(at most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so each
activation of a 3D network (32 channels at 64³ hold 32 MiB) is a new mapping whose pages the
kernel faults in and zeroes one by one. On this suite's CPU machines that was more than half of a
MedNeXt step: a forward pass at 64³ in 1.07 s with 2.6 million page faults, 0.33 s with 0.2
million once the blocks are reused (``tune``), the same arithmetic in both.

``tune()`` keeps large blocks in the heap (``mallopt(M_MMAP_MAX, 0)``) and freed memory in the
process (``M_TRIM_THRESHOLD`` at 2 GiB), what jemalloc or tcmalloc preloaded would also give
(PyTorch's CPU performance guide recommends them); it is a no-op where there is no glibc. Every
``mednext`` command calls it first, unless ``MEDNEXT_MALLOC=system`` asks for glibc's defaults.
The price: memory a run freed stays with the process for its next allocations instead of going
back to the system (peak use is unchanged).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: ``MEDNEXT_MALLOC=system`` leaves glibc's allocator as it is.
ENVIRONMENT = "MEDNEXT_MALLOC"
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1


def tune() -> bool:
    """Tune glibc's allocator for this process (and the processes it forks); whether it was.
    Not on other C libraries or operating systems, nor with ``MEDNEXT_MALLOC=system``."""
    if os.environ.get(ENVIRONMENT, "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
