"""Issue 11 drill on the real engine: the disk holding the results fills up in the middle of a run.

A small tmpfs is the results directory; once the run is under way (its first steps recorded,
a sleep in progress) everything left on it is taken. The run must stop with one clear message
and a non-zero exit, mark its run.json incomplete with the reason (never leave it `running`),
and `labctl report` on what it wrote must work in every format.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from labctl import api

from .conftest import THREE_NODES

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """
name: slow-close
description: A connection that sleeps before it closes, so the disk can fill in the middle.
steps:
  - {node: server, listen: {port: 5100}, as: lsn}
  - {node: client, connect: {to: server, port: 5100}, as: c}
  - {node: server, accept: lsn, as: s}
  - {node: client, send: {sock: c, data: "hello"}}
  - {sleep: 3s, note: "the disk fills now"}
  - {node: client, close: c}
  - {node: server, close: s}
  - {sleep: 0.3s}
expect:
  - {segments: {from: client, to: server, flags: F, count: 1}}
"""


@pytest.fixture
def small_results():
    """A 64 MiB tmpfs (a run needs 50 MiB free to start), unmounted afterwards."""
    mount = Path(tempfile.mkdtemp(prefix="labctl-full-results-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)
        mount.rmdir()


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert os.statvfs(directory).f_bavail == 0


def test_a_disk_that_fills_mid_run_marks_the_run_incomplete_with_one_message(engine, node_image, make_lab, small_results):
    lab = make_lab(THREE_NODES, name=f"damaged-full-{os.getpid()}")
    (lab / "scenarios").mkdir()
    (lab / "scenarios" / "slow-close.yaml").write_text(SCENARIO)
    api.up(lab, engine=engine)  # up first, so the run itself is what the disk fills under
    run = subprocess.Popen([sys.executable, "-m", "labctl", "run", str(lab), "-s", "slow-close", "--results", str(small_results)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    steps = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        found = list(small_results.glob(f"{lab.name}/*/steps.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 4:  # the sleep is under way
            steps = found[0]
            break
        time.sleep(0.05)
    assert steps is not None, run.communicate()
    fill(small_results)
    out, err = run.communicate(timeout=120)
    run_dir = steps.parent

    assert run.returncode == 2, (out, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"error: the results directory {small_results} could not be written during the run "
                                "(No space left on device, writing "), errors[0]
    assert f"{run_dir} is marked incomplete" in errors[0]

    recorded = json.loads((run_dir / "run.json").read_text())
    assert recorded["status"] == "incomplete"
    assert "No space left on device" in recorded["reason"] and str(small_results) in recorded["reason"]
    assert recorded["ended"] is not None
    # Every line whole (a line may still fit in a page the file already has: which steps got in varies).
    written = [json.loads(line) for line in steps.read_text().splitlines()]
    assert [s["kind"] for s in written if "index" in s][:4] == ["listen", "connect", "accept", "send"]
    assert not list(run_dir.rglob(".*.pcap.*")) and not list(run_dir.rglob(".run.json.*"))  # no temporary file left

    for fmt in ("term", "md", "html", "json"):
        report = subprocess.run([sys.executable, "-m", "labctl", "report", str(run_dir), "--format", fmt],
                                capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert report.returncode == 0 and "Traceback" not in report.stderr, (fmt, report.stderr)
        assert "No space left on device" in report.stdout
    data = json.loads(report.stdout)
    assert data["outcome"] == "fail" and data["run"]["status"] == "incomplete"
    # The captures did not fit after the disk filled: said per capture, not silently "0 segments".
    missing = {d["file"] for d in data["damage"] if d["problem"].startswith("it is missing")}
    present = {f"pcaps/{p.name}" for p in (run_dir / "pcaps").iterdir()}
    assert missing | present == {"pcaps/client-left.pcap", "pcaps/router-left.pcap", "pcaps/router-right.pcap",
                                 "pcaps/server-right.pcap"}, (missing, present)
    api.down(lab, engine=engine)
