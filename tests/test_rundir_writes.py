"""A run's files are never half-written, also when the disk fills (a real tmpfs, no engine needed).

JSON and captures are whole or absent (a temporary name, synced, renamed); a JSONL record
is one whole line, and a write that fails part-way is cut back; the run directory keeps a
reserve so that run.json can still be rewritten on a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from labctl import rundir as rundir_module
from labctl.rundir import RESERVE_FILE, RunDir, read_jsonl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")


@pytest.fixture
def small_disk():
    """A 1 MiB tmpfs, unmounted afterwards."""
    mount = Path(tempfile.mkdtemp(prefix="labctl-small-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # a file a failed test left open must not keep it
        mount.rmdir()


def fill(directory: Path, leave: int = 0) -> None:
    """Take every free byte (but ``leave``) of the file system ``directory`` is on."""
    with open(directory / "filler", "wb") as fh:
        try:
            while True:
                free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize - leave
                if free <= 0:
                    break
                fh.write(b"\0" * min(free, 65536))
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_appends_on_a_filling_disk_leave_only_whole_lines(small_disk):
    run = RunDir.create("lab", "full", small_disk)
    fill(small_disk, leave=40_000)  # tmpfs counts in pages: room for some lines, not all
    record = {"t": 1.0, "node": "client", "local": "10.0.0.1:1", "remote": "10.0.0.2:2", "state": "ESTABLISHED", "pad": "x" * 900}
    written = 0
    while run.append("states.jsonl", record) and written < 10_000:
        written += 1
    name, exc = run.failure
    assert name == "states.jsonl" and exc.errno == errno.ENOSPC and 0 < written < 10_000
    run.close()
    data = (run.path / "states.jsonl").read_bytes()
    assert data.endswith(b"\n") and len(data.splitlines()) == written
    damage: list = []
    assert len(list(read_jsonl(run.path / "states.jsonl", damage))) == written and damage == []
    assert not (run.path / RESERVE_FILE).exists()  # given back at the end


def test_a_capture_that_does_not_fit_is_absent_not_half_there(small_disk):
    run = RunDir.create("lab", "full", small_disk)
    fill(small_disk, leave=20_000)
    assert not run.write_bytes("pcaps/client-left.pcap", b"\xd4\xc3\xb2\xa1" + b"x" * 200_000)
    assert run.failure[0] == "pcaps/client-left.pcap" and run.failure[1].errno == errno.ENOSPC
    assert list((run.path / "pcaps").iterdir()) == []  # neither the capture nor its temporary file


def test_run_json_is_still_rewritten_on_a_full_disk_from_the_reserve(small_disk):
    run = RunDir.create("lab", "full", small_disk)
    run.write("run.json", {"schema_version": 1, "status": "running"})
    fill(small_disk)
    assert not run.append("steps.jsonl", {"index": 0, "kind": "sleep", "pad": "x" * 9000})
    run.close()
    run.write("run.json", {"schema_version": 1, "status": "incomplete", "reason": "the disk filled", "pad": "y" * 20_000})
    assert json.loads((run.path / "run.json").read_text())["status"] == "incomplete"


def test_a_write_cut_part_way_is_cut_back_to_the_line_before(tmp_path, monkeypatch):
    run = RunDir.create("lab", "cut", tmp_path)
    assert run.append("steps.jsonl", {"index": 0, "kind": "listen"})
    real_write = os.write
    calls = []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])  # a short write, as a filling disk gives
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir_module.os, "write", half_then_full)
    assert not run.append("steps.jsonl", {"index": 1, "kind": "connect", "pad": "z" * 100})
    monkeypatch.undo()
    assert (run.path / "steps.jsonl").read_text() == '{"index": 0, "kind": "listen"}\n'
    assert run.failure[0] == "steps.jsonl"


def test_a_json_write_that_fails_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    run = RunDir.create("lab", "cut", tmp_path)
    run.write("run.json", {"status": "running"})

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("labctl.agent.system.json.dump", no_room)
    with pytest.raises(OSError):
        run.write("run.json", {"status": "complete"})
    monkeypatch.undo()
    assert json.loads((run.path / "run.json").read_text()) == {"status": "running"}
    assert sorted(p.name for p in run.path.iterdir()) == ["logs", "pcaps", "run.json"]  # no temporary file left


# --- a run whose disk fills (the memory engine: no Docker, the run's own writes are real) ---------

from labctl import api  # noqa: E402
from labctl.engine.memory import MemoryEngine  # noqa: E402
from labctl.run.runner import ResultsUnwritable  # noqa: E402

TEARDOWN = Path(__file__).resolve().parent.parent / "labs" / "teardown"


@pytest.fixture
def results_disk():
    """A 60 MiB tmpfs: a run needs 50 MiB free to start."""
    mount = Path(tempfile.mkdtemp(prefix="labctl-results-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)
        mount.rmdir()


class Capturing(MemoryEngine):
    """The memory engine, with a 200 kB capture on every node to collect at the end of a run."""

    def fetch(self, lab: str, node: str, path: str) -> bytes | None:
        import io
        import struct
        import tarfile

        pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1) + struct.pack("<IIII", 1, 0, 200_000, 200_000) + bytes(200_000)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for iface in ("left", "right"):
                info = tarfile.TarInfo(f"run/pcaps/{node}-{iface}.pcap")
                info.size = len(pcap)
                tar.addfile(info, io.BytesIO(pcap))
        return buffer.getvalue()


def run_filling_at_step(results: Path, step: int):
    engine = Capturing()
    api.up(TEARDOWN, engine=engine)

    def progress(message: str) -> None:
        if message.startswith(f"step {step}:"):
            fill(results)

    with pytest.raises(ResultsUnwritable) as stopped:
        api.run(TEARDOWN, ["normal-close"], engine=engine, root=results, progress=progress)
    [run_dir] = list((results / "teardown").iterdir())
    return stopped.value, run_dir


def test_a_run_whose_disk_fills_is_marked_incomplete_and_says_so_once(results_disk):
    error, run_dir = run_filling_at_step(results_disk, 3)
    assert error.exit_code == 2
    assert error.message.startswith(f"the results directory {results_disk} could not be written during the run (No space left on device, writing ")
    assert error.message.endswith(f"{run_dir} is marked incomplete and keeps what was written")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "incomplete" and "No space left on device" in run["reason"] and run["ended"]
    assert not (run_dir / RESERVE_FILE).exists()


def test_when_even_run_json_cannot_be_written_the_error_says_it_still_says_running(results_disk, monkeypatch):
    monkeypatch.setattr(RunDir, "RESERVE", 0)  # nothing set aside: the last rewrite of run.json cannot fit either
    error, run_dir = run_filling_at_step(results_disk, 3)
    assert error.exit_code == 2
    assert "could not be written during the run (No space left on device" in error.message
    assert error.message.endswith(f"and {run_dir / 'run.json'} could not be written (No space left on device): it still says running")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
