"""A CPU hog: busy processes on every core, to see what a lab's evidence is worth on a loaded machine.

Lab nodes share the host's CPUs: tcpdump, the agents' samplers, the userspace
rule and shaper engines and the kernel's softirqs all compete with whatever
else runs. ``cpu_hog()`` starts one busy loop per core (plain processes of the
host, at normal priority, as a student's browser or a CI neighbour would be)
and ends them, by their ids, when the block ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

BUSY_LOOP = "while True: pass"


@dataclass
class Hog:
    processes: list[subprocess.Popen] = field(default_factory=list)
    started: float = 0.0
    cpu_seconds: float = 0.0  # what the busy loops got, summed, once ended
    wall_seconds: float = 0.0
    idle_fraction: float | None = None  # of all cores over the block (/proc/stat): near 0 when the hog works

    @property
    def cores_busy(self) -> float:
        """How many cores' worth of CPU time the loops had over the block (at most one each)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def describe(self) -> str:
        idle = "" if self.idle_fraction is None else f", the machine idle {self.idle_fraction:.1%} of the time"
        return (f"cpu hog: {len(self.processes)} busy processes had {self.cores_busy:.2f} of "
                f"{os.cpu_count()} cores over {self.wall_seconds:.1f} s{idle}")


def _cpu_times() -> tuple[int, int] | None:
    """(idle + iowait, total) jiffies of all cores since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (Linux)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def cpu_hog(processes: int | None = None) -> Iterator[Hog]:
    """Keep ``processes`` busy loops (default: one per core) running for the block."""
    hog = Hog(started=time.monotonic())
    before = _cpu_times()
    try:
        for _ in range(processes or os.cpu_count() or 1):
            hog.processes.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                                                  start_new_session=True))
        yield hog
    finally:
        hog.wall_seconds = time.monotonic() - hog.started
        hog.cpu_seconds = sum(_cpu_seconds(p.pid) for p in hog.processes)
        after = _cpu_times()
        if before and after and after[1] > before[1]:
            hog.idle_fraction = (after[0] - before[0]) / (after[1] - before[1])
        for proc in hog.processes:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
