"""Kernel TCP events from tracefs tracepoints, on the host, during a run.

Tracepoints see every network namespace, so events are kept only when one
end is a lab address, and attributed to the node owning the local address.
They are exact (the kernel's own transition), where sampling can miss a
state that lasts less than a sample. Caveat (DESIGN.md): TIME_WAIT lives in
a separate timewait socket, so the full socket's tracepoint shows
FIN_WAIT2 -> CLOSE; the analysis takes TIME_WAIT from sampling and captures.

The trace clock is CLOCK_MONOTONIC; each event is converted to the host's
realtime clock (which captures use) with an offset measured at start.

tracefs is often present but not mounted (every fresh machine here): a run
mounts it when it may (as root), and otherwise says why it could not.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from ..engine.tracefs import TRACEPOINTS, Tracefs

_LINE = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s+(?P<body>.*)$")
_FIELD = re.compile(r"(\w+)=(\S+)")


def parse_line(line: str, offset: float) -> dict | None:
    match = _LINE.match(line)
    if not match:
        return None
    fields = dict(_FIELD.findall(match.group("body")))
    record: dict = {"t": float(match.group("ts")) + offset, "source": "tracepoint", "event": match.group("event")}
    if fields.get("family", "AF_INET") != "AF_INET":
        return None
    for end, (addr_key, port_key) in (("src", ("saddr", "sport")), ("dest", ("daddr", "dport"))):
        if end in fields:  # tcp_send_reset prints src=ADDR:PORT dest=ADDR:PORT
            address, _, port = fields.pop(end).rpartition(":")
            fields[addr_key], fields[port_key] = address, port
    record["local"] = f"{fields.get('saddr')}:{fields.get('sport')}"
    record["remote"] = f"{fields.get('daddr')}:{fields.get('dport')}"
    for key in ("oldstate", "newstate", "state", "reason"):
        if key in fields:
            record[key] = fields[key].removeprefix("TCP_")
    return record


class KernelEvents:
    """Start, read and stop a private tracefs instance for one run."""

    def __init__(self, tracefs: Tracefs | None, addresses: Mapping[str, str], sink: Callable[[dict], None]):
        self.tracefs = tracefs  # None: the engine's nodes do not run on this host's kernel
        self.addresses = dict(addresses)  # lab IPv4 address -> node
        self.sink = sink
        self.instance: Path | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.unavailable: str | None = None
        self.mounted_here = False  # this run mounted tracefs
        self.count = 0

    def start(self) -> bool:
        """Trace the lab's TCP events from now on; False (and ``unavailable`` says why) when they cannot be had."""
        self.unavailable = self._why_not()
        if self.unavailable:
            return False
        instances = self.tracefs.root / "instances"
        try:
            self.instance = instances / f"labctl-{secrets.token_hex(4)}"
            self.instance.mkdir()
            (self.instance / "trace_clock").write_text("mono")
            (self.instance / "buffer_size_kb").write_text("4096")
            for event in TRACEPOINTS:
                (self.instance / "events" / event / "enable").write_text("1")
        except OSError as exc:
            self.unavailable = f"cannot use tracefs: {exc.strerror or exc}"
            self._remove()
            return False
        # The trace clock is monotonic; captures use realtime. Measure the offset tightly.
        before = time.monotonic()
        now = time.time()
        after = time.monotonic()
        self.offset = now - (before + after) / 2
        self.thread = threading.Thread(target=self._read, daemon=True, name="tracefs")
        self.thread.start()
        return True

    def _why_not(self) -> str | None:
        if self.tracefs is None:
            return "the engine's nodes do not run on this host's kernel"
        root = self.tracefs.root
        was_mounted = self.tracefs.events.is_dir()
        self.mounted_here = not was_mounted and self.tracefs.mounted()
        if not self.tracefs.mounted():  # mounts it first where it may
            if os.geteuid() != 0:
                return f"{root} is not mounted and labctl is not root to mount it (mount -t tracefs nodev {root})"
            return f"{root} is not mounted and `mount -t tracefs nodev {root}` failed"
        if not (root / "instances").is_dir():
            return f"{root} has no instances directory (a kernel older than 4.1?)"
        missing = self.tracefs.missing()
        if missing:
            return f"tracepoints missing: {', '.join(missing)}"
        return None

    def _read(self) -> None:
        # Raw reads of whatever the pipe holds: a buffered readline() kept lines it had read ahead
        # until the kernel wrote more (a state change reached steps waiting on it seconds late).
        assert self.instance is not None
        import select

        fd = os.open(self.instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        pending = b""
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.1)
                chunk = b""
                if ready:
                    try:
                        chunk = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        pass
                if not chunk:
                    if self.stopping.is_set():
                        return
                    continue
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._line(line.decode(errors="replace"))
        finally:
            os.close(fd)

    def _line(self, line: str) -> None:
        record = parse_line(line, self.offset)
        if record is None:
            return
        local_ip = record["local"].rpartition(":")[0]
        remote_ip = record["remote"].rpartition(":")[0]
        node = self.addresses.get(local_ip)
        if node is None and remote_ip not in self.addresses:
            return  # not lab traffic
        record["node"] = node
        self.count += 1
        self.sink(record)

    def stop(self) -> None:
        if self.instance is None:
            return
        try:
            for event in TRACEPOINTS:
                (self.instance / "events" / event / "enable").write_text("0")
        except OSError:
            pass
        time.sleep(0.15)  # let the reader drain what is buffered
        self.stopping.set()
        if self.thread:
            self.thread.join(timeout=3)
        self._remove()

    def _remove(self) -> None:
        if self.instance is not None and self.instance.exists():
            try:
                self.instance.rmdir()
            except OSError:
                pass
