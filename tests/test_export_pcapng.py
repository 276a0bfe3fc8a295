"""`labctl export pcapng`: a run's captures in one file Wireshark opens with an interface per
NODE:IFACE. tshark reads the result (an independent reader), against dpkt's reading of the
run directory's own pcaps."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from labctl.export import pcapng
from tests import synthetic
from tests.test_cli_conventions import ROOT, run_cli



@pytest.fixture(autouse=True)
def _tshark_installed():
    # An independent reader is the point of these tests: missing, they fail rather than skip.
    assert shutil.which("tshark"), "tshark is missing: apt-get install tshark (the README's test command does)"

FIELDS = ["frame.time_epoch", "frame.interface_name", "frame.interface_description", "ip.src", "tcp.flags.str"]


def tshark(path, *extra) -> list[list[str]]:
    argv = ["tshark", "-r", str(path), "-T", "fields", *[a for f in FIELDS for a in ("-e", f)], *extra]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


def originals(run_dir) -> list[tuple[float, str]]:
    seen = []
    for path in sorted((run_dir / "pcaps").glob("*.pcap")):
        with open(path, "rb") as fh:
            seen += [(round(ts, 6), path.stem.replace("-", ":", 1)) for ts, _ in dpkt.pcap.Reader(fh)]
    return sorted(seen)


@pytest.fixture
def run_dir(tmp_path):
    return synthetic.lost_final_ack().write(tmp_path / "results" / "synth")  # as results/LAB/RUN-ID


def test_every_packet_once_in_time_order_with_its_interface(run_dir, tmp_path):
    target = tmp_path / "run.pcapng"
    with open(target, "wb") as fh:
        summary = pcapng.write(run_dir, fh)
    rows = tshark(target)
    assert summary["packets"] == len(rows) == len(originals(run_dir))
    assert sorted(summary["interfaces"]) == ["client:left", "router:left", "router:right", "server:right"]
    times = [float(r[0]) for r in rows]
    assert times == sorted(times)
    assert sorted((round(float(r[0]), 6), r[1]) for r in rows) == originals(run_dir)
    descriptions = {r[1]: r[2] for r in rows}
    assert descriptions["router:right"] == "router right 10.250.2.1/24 on link right"
    assert descriptions["client:left"] == "client left 10.250.1.1/24 on link left"


def test_nanoseconds_stay_nanoseconds(tmp_path):
    """tcpdump in the nodes writes nanosecond pcaps (magic a1b23c4d)."""
    run = tmp_path / "run"
    (run / "pcaps").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"nodes": {"a-b": {"interfaces": {"net-1": "10.0.0.1/24"}}}, "links": {"net-1": {}}}))
    frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=b"\x45" + b"\0" * 19))
    header = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    records = b"".join(struct.pack("<IIII", 1_796_000_000, ns, len(frame), len(frame)) + frame for ns in (123_456_789, 123_456_790))
    (run / "pcaps" / "a-b-net-1.pcap").write_bytes(header + records + struct.pack("<IIII", 1_796_000_001, 0, 500, 500) + b"cut")
    target = tmp_path / "out.pcapng"
    with open(target, "wb") as fh:
        assert pcapng.write(run, fh)["packets"] == 2  # the record cut mid-packet is left out
    rows = tshark(target)
    assert [r[0] for r in rows] == ["1796000000.123456789", "1796000000.123456790"]
    assert {r[1] for r in rows} == {"a-b:net-1"}  # names with '-' split as run.json says


def test_the_command_writes_a_file_or_a_pipe_for_a_lab_latest_run(run_dir, tmp_path):
    target = tmp_path / "out.pcapng"
    written = run_cli("export", "pcapng", "synth", "--results", str(run_dir.parent.parent), "-o", str(target))
    assert written.returncode == 0, written.stderr
    assert len(tshark(target)) == len(originals(run_dir))
    exported = subprocess.Popen([sys.executable, "-m", "labctl", "export", "pcapng", str(run_dir), "-o", "-"], cwd=ROOT,
                                stdout=subprocess.PIPE)
    read = subprocess.run(["tshark", "-r", "-"], stdin=exported.stdout, capture_output=True, text=True, timeout=60)
    exported.stdout.close()
    assert exported.wait(timeout=60) == 0
    assert len(read.stdout.splitlines()) == len(originals(run_dir))


def test_a_directory_without_runs_is_a_usage_error(tmp_path):
    result = run_cli("export", "pcapng", str(tmp_path))
    assert result.returncode == 2 and "not a run directory" in result.stderr


def test_damaged_captures_give_what_is_whole_and_say_what_is_not(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "runs" / "lost-final-ack", run)
    (run / "pcaps" / "client-left.pcap").write_bytes(b"GARBAGE!" * 100)
    data = (run / "pcaps" / "router-left.pcap").read_bytes()
    first = 24 + 16 + struct.unpack_from("<I", data, 32)[0]
    (run / "pcaps" / "router-left.pcap").write_bytes(data[:first] + b"\xff" * 16 + data[first:])
    target = tmp_path / "out.pcapng"
    result = run_cli("export", "pcapng", str(run), "-o", str(target))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes == ["note: pcaps/client-left.pcap: it is not a pcap file (its first bytes are not a pcap magic number): garbage or another format",
                     "note: pcaps/router-left.pcap: packet 2 (at byte 114) is damaged (its record header is garbage): the one whole "
                     "packet before it is read, the last 767 bytes are not"]
    whole = sum(len(list(dpkt.pcap.Reader(open(run / "pcaps" / name, "rb")))) for name in ("router-right.pcap", "server-right.pcap"))
    with open(target, "rb") as fh:
        assert len(list(dpkt.pcapng.Reader(fh))) == whole + 1  # the other two captures, and router-left's first packet
