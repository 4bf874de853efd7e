"""A process's resident memory, read from the kernel: the one place rayalign measures RSS.

Peak memory is the kernel's per-process high-water mark (VmHWM), not ``ru_maxrss``: on Linux a spawned child's
``ru_maxrss`` starts at its parent's peak (it survives fork + exec), so it would report the parent's memory
whenever that is larger. Writing 5 to ``/proc/self/clear_refs`` resets the mark to the current RSS.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
from pathlib import Path

PROBE_ENV = "RAYALIGN_MEMORY_PROBE"
"""A directory: when set, each training process writes its RSS rise there (`rayalign bench memory` reads it)."""


def memory_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB; where /proc is missing, both are ru_maxrss."""
    try:
        fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE))
        return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        return peak, peak


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RiseProbe:
    """The rise of this process's RSS above what it held when the probe started, written on `finish` to the
    directory named by $RAYALIGN_MEMORY_PROBE (one JSON file per process and rank). A no-op when it is unset."""

    def __init__(self):
        self.where = os.environ.get(PROBE_ENV)
        self.base = memory_mib()[0] if self.where else 0.0
        self.exact = reset_peak() if self.where else False
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """Record the peak rise since the last mark as `phase`'s (the largest, if the phase recurs)."""
        if self.where:
            rise = memory_mib()[1] - self.base
            self.phases[phase] = max(rise, self.phases.get(phase, 0.0))
            reset_peak()

    def finish(self, rank: int, **extra) -> None:
        if not self.where:
            return
        self.mark("end")
        rise = max(self.phases.values())
        record = {"rank": rank, "pid": os.getpid(), "base_mib": self.base, "rise_mib": rise,
                  "phase_rise_mib": self.phases, "exact": self.exact, **extra}
        Path(self.where).mkdir(parents=True, exist_ok=True)
        (Path(self.where) / f"{os.getpid()}_{rank}.json").write_text(json.dumps(record))


def return_freed_blocks(threshold: int = 128 << 10) -> bool:
    """Have glibc map every block above `threshold` bytes on its own, so that a freed one goes back to the OS.

    glibc's threshold otherwise rises with each freed mapped block, up to 32 MiB, and blocks below it come from its
    heaps, which keep what is freed. A sharded CPU rank gathers and frees every unit's parameters and gradients at
    each step, so with the default it holds on to those transients (measured on 4 gloo ranks of a 0.5B model: one
    forward/backward peaked 3.3 GiB above the load with the default, 1.9 GiB with this). False where it cannot.
    """
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, threshold) == 1  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
