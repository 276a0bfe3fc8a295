"""The CPU hog of scripts/repeat_scenarios.py --cpu-hog: busy while the block runs, gone after it."""

from __future__ import annotations

import os
import time

from labctl.cpuload import cpu_hog


def test_the_hog_keeps_a_loop_per_core_busy_and_ends_them_all():
    with cpu_hog() as hog:
        pids = [p.pid for p in hog.processes]
        assert len(pids) == os.cpu_count()
        time.sleep(1.0)
        assert all(p.poll() is None for p in hog.processes)
    assert hog.cores_busy > 0.3 and hog.idle_fraction is not None and hog.idle_fraction < 0.5
    for pid in pids:  # reaped, not merely signalled
        assert not os.path.exists(f"/proc/{pid}"), pid
    assert "busy processes had" in hog.describe()


def test_the_hog_ends_even_when_the_block_raises():
    try:
        with cpu_hog(1) as hog:
            pid = hog.processes[0].pid
            raise RuntimeError("a run that failed")
    except RuntimeError:
        pass
    assert not os.path.exists(f"/proc/{pid}")
