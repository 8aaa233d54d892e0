"""``mednext.cpu_allocator``: with glibc tuned, a freed large tensor's memory is reused by the next
one instead of being mapped and faulted in afresh; ``MEDNEXT_MALLOC=system`` leaves glibc alone.
Each case runs in a fresh interpreter, since the setting is the process's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Page faults of five 64 MiB tensors allocated, filled and freed after ten warm-up rounds.
PROBE = textwrap.dedent(
    """
    import resource
    import torch
    from mednext import cpu_allocator

    tuned = cpu_allocator.tune()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(2**24).fill_(1.0)
    before = faults()
    for _ in range(5):
        torch.empty(2**24).fill_(1.0)
    print(tuned, faults() - before)
    """
)
PAGES_OF_FIVE_TENSORS = 5 * 2**26 // 4096


def probe(**environment: str) -> tuple[bool, int]:
    env = {**os.environ, **environment}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    tuned, faults = result.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is Linux's")
def test_tuned_allocator_reuses_freed_large_blocks() -> None:
    tuned, faults = probe()
    assert tuned
    assert faults < PAGES_OF_FIVE_TENSORS // 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is Linux's")
def test_system_allocator_maps_every_large_block_afresh() -> None:
    tuned, faults = probe(MEDNEXT_MALLOC="system")
    assert not tuned
    assert faults >= PAGES_OF_FIVE_TENSORS * 0.9
