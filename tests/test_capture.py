"""`labctl capture`: a live capture streamed out of a node, read by tshark (an independent reader)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from labctl import api
from tests.conftest import THREE_NODES
from tests.test_cli_conventions import ROOT, run_cli

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def lab(engine, node_image, tmp_path_factory):
    import secrets
    import textwrap

    name = f"cap{secrets.token_hex(3)}"
    directory = tmp_path_factory.mktemp("lab") / name
    directory.mkdir()
    (directory / "lab.yaml").write_text(f"name: {name}\n" + textwrap.dedent(THREE_NODES))
    api.up(directory, engine=engine)
    yield name
    engine.destroy(name)


def _labctl(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labctl", *argv], cwd=ROOT, **kwargs)


def _live(capture: subprocess.Popen) -> None:
    """Until tcpdump in the node says it listens (its stderr comes through labctl's)."""
    seen = []
    while line := capture.stderr.readline().decode():
        seen.append(line)
        if "listening on" in line:
            return
    raise AssertionError("".join(seen))


def _tcpdumps(engine, lab: str, node: str) -> str:
    return engine.exec(lab, node, ["sh", "-c", "pgrep -a tcpdump || true"]).stdout.strip()


def test_a_pcap_on_stdout_is_read_by_tshark(engine, lab):
    capture = _labctl("capture", lab, "router:right", "-w", "-", "-c", "4", "icmp", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tshark = subprocess.Popen(["tshark", "-r", "-", "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type"],
                              stdin=capture.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    capture.stdout.close()
    _live(capture)
    ping = engine.exec(lab, "client", ["ping", "-c", "2", "-i", "0.2", "server"])
    assert ping.exit_code == 0, ping.stdout
    out, errors = tshark.communicate(timeout=30)
    assert capture.wait(timeout=30) == 0, capture.stderr.read().decode()
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 4, (out, errors)
    assert [row[2] for row in rows] == ["8", "0", "8", "0"]  # echo request, reply, twice, across the router


def test_a_stopped_capture_leaves_no_tcpdump_in_the_node(engine, lab):
    capture = _labctl("capture", lab, "client", "-w", "-", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while not _tcpdumps(engine, lab, "client") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tcpdumps(engine, lab, "client")
    capture.terminate()
    capture.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _tcpdumps(engine, lab, "client") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tcpdumps(engine, lab, "client") == ""


def test_a_capture_file_and_text_lines(engine, lab, tmp_path):
    target = tmp_path / "client.pcap"
    capture = _labctl("capture", lab, "client", "-w", str(target), "-c", "2", "icmp", stderr=subprocess.PIPE)
    text = _labctl("capture", lab, "server", "-c", "2", "icmp", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _live(capture)
    _live(text)
    engine.exec(lab, "client", ["ping", "-c", "1", "server"])
    assert capture.wait(timeout=30) == 0
    assert text.wait(timeout=30) == 0
    lines = text.stdout.read().decode().splitlines()
    assert len(lines) == 2 and "ICMP echo request" in lines[0] and "ICMP echo reply" in lines[1]
    read = subprocess.run(["tshark", "-r", str(target)], capture_output=True, text=True)
    assert read.returncode == 0 and len(read.stdout.splitlines()) == 2


def test_an_unknown_interface_names_the_nodes_interfaces(lab):
    result = run_cli("capture", lab, "router:eth9", "-w", "-")
    assert result.returncode == 2
    assert "left" in result.stderr and "right" in result.stderr
