"""What a run's observers say they could not have, and why, without Docker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labctl.engine.tracefs import TRACEPOINTS, Tracefs
from labctl.observe.tracing import KernelEvents


@dataclass(frozen=True)
class FakeTracefs(Tracefs):
    """A tracefs in a folder, mounted or not (never a real mount)."""

    mountable: bool = False

    def mounted(self) -> bool:
        if self.mountable:
            for tp in TRACEPOINTS:
                (self.events / tp).mkdir(parents=True, exist_ok=True)
            (self.root / "instances").mkdir(exist_ok=True)
        return self.events.is_dir()


def events(tracefs) -> KernelEvents:
    return KernelEvents(tracefs, {"10.0.0.1": "a"}, lambda record: None)


def test_without_a_host_kernel_there_are_no_tracepoints_and_it_says_why():
    kernel = events(None)
    assert not kernel.start()
    assert kernel.unavailable == "the engine's nodes do not run on this host's kernel"


def test_an_unmounted_tracefs_that_cannot_be_mounted_is_named_with_the_command(tmp_path: Path):
    kernel = events(FakeTracefs(tmp_path))
    assert not kernel.start()
    assert str(tmp_path) in kernel.unavailable and "mount -t tracefs nodev" in kernel.unavailable
    assert not kernel.mounted_here


def test_a_tracefs_the_run_mounts_is_said_to_be_mounted_here(tmp_path: Path):
    kernel = events(FakeTracefs(tmp_path, mountable=True))
    kernel._why_not()
    assert kernel.unavailable is None and kernel.mounted_here


def test_missing_tracepoints_are_named(tmp_path: Path):
    (tmp_path / "events" / "sock" / "inet_sock_set_state").mkdir(parents=True)
    (tmp_path / "instances").mkdir()
    kernel = events(FakeTracefs(tmp_path))
    assert not kernel.start()
    assert kernel.unavailable == "tracepoints missing: tcp/tcp_retransmit_skb, tcp/tcp_send_reset, tcp/tcp_receive_reset"


def test_each_tracepoint_line_reaches_the_run_as_soon_as_the_kernel_writes_it(tmp_path: Path):
    # Two state changes written at once, then nothing: both must come out now, not when more comes.
    import os
    import threading
    import time

    from labctl.observe.tracing import KernelEvents

    os.mkfifo(tmp_path / "trace_pipe")
    got: list[dict] = []
    events = KernelEvents(None, {"10.0.2.10": "server"}, got.append)
    events.instance, events.offset = tmp_path, 0.0
    reader = threading.Thread(target=events._read, daemon=True)
    reader.start()
    line = ("  python3-7 [001] ..s1. {ts}: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=5003 dport=40000 "
            "saddr=10.0.2.10 daddr=10.0.1.1 saddrv6=::ffff:10.0.2.10 daddrv6=::ffff:10.0.1.1 oldstate={old} newstate={new}\n")
    writer = os.open(tmp_path / "trace_pipe", os.O_WRONLY)
    try:
        os.write(writer, (line.format(ts="100.000001", old="TCP_CLOSE_WAIT", new="TCP_LAST_ACK")
                          + line.format(ts="100.000201", old="TCP_LAST_ACK", new="TCP_CLOSE")).encode())
        deadline = time.monotonic() + 1.0
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [(r["oldstate"], r["newstate"], r["node"]) for r in got] == [("CLOSE_WAIT", "LAST_ACK", "server"),
                                                                           ("LAST_ACK", "CLOSE", "server")]
    finally:
        events.stopping.set()
        os.close(writer)
        reader.join(timeout=2)
