"""The host's tracefs: kernel TCP events an engine can offer when its nodes run on this machine.

Tracepoints see every network namespace, so one reader on the host sees every
node's sockets (``labctl/observe/tracing.py`` reads them during a run). Only an
engine whose nodes share this machine's kernel can offer it: see
``Engine.host_observers``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
TRACEPOINTS = ("sock/inet_sock_set_state", "tcp/tcp_retransmit_skb", "tcp/tcp_send_reset", "tcp/tcp_receive_reset")


@dataclass(frozen=True)
class Tracefs:
    root: Path = TRACEFS

    @property
    def events(self) -> Path:
        return self.root / "events"

    def mounted(self) -> bool:
        """Whether it is mounted, mounting it first where root may (often present, not mounted; no side effects)."""
        if not self.events.is_dir() and os.geteuid() == 0:
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(self.root)], capture_output=True)
        return self.events.is_dir()

    def missing(self) -> list[str]:
        """Tracepoints labctl reads that this kernel lacks."""
        return [tp for tp in TRACEPOINTS if not (self.events / tp).is_dir()]
