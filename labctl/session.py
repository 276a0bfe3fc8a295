"""The runner's line to one node's actor: JSON lines over an engine stream."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable

from .engine import Engine

AGENT = ["python3", "-m", "labctl.agent"]


class NodeLost(Exception):
    """The node's actor went away (the node died or was removed) during a run."""


class ActorSession:
    def __init__(self, engine: Engine, lab: str, node: str, config: dict, log_path: Path,
                 on_event: Callable[[str, dict], None] | None = None, lost: threading.Event | None = None):
        self.node = node
        self.lost = lost or threading.Event()  # set when this actor goes away
        self.on_event = on_event or (lambda node, event: None)
        self.stream = engine.attach(lab, node, [*AGENT, "actor", json.dumps(config)])
        self.log = open(log_path, "ab")
        self.lock = threading.Lock()
        self.replies: dict[int, dict] = {}
        self.arrived = threading.Condition(self.lock)
        self.next_id = 0
        self.ready: dict | None = None
        self.closed = False
        self.stopping = False  # the runner asked the actor to stop: its end is no loss
        self.reader = threading.Thread(target=self._read, daemon=True, name=f"actor-{node}")
        self.reader.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.stream.read()
                if chunk is None:
                    break
                kind, data = chunk
                if kind == 2:
                    self.log.write(data)
                    self.log.flush()
                    continue
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(json.loads(line))
        except OSError:
            pass
        finally:
            with self.lock:
                self.closed = True
                self.arrived.notify_all()
            if not self.stopping:
                self.lost.set()

    def _dispatch(self, message: dict) -> None:
        if message.get("event"):
            self.on_event(self.node, message)
        with self.lock:
            if "ready" in message:
                self.ready = message
            elif "id" in message and not message.get("event"):
                self.replies[message["id"]] = message
            self.arrived.notify_all()

    def wait_ready(self, timeout: float = 20.0) -> dict:
        with self.lock:
            self.arrived.wait_for(lambda: self.ready is not None or self.closed, timeout)
            if self.ready is None:
                raise NodeLost(f"the actor on {self.node} did not start: {self._log_tail()}")
            return self.ready

    def call(self, op: str, args: dict | None = None, *, timeout: float = 60.0, background: bool = False,
             name: str | None = None) -> dict:
        with self.lock:
            self.next_id += 1
            ident = self.next_id
        command = {"id": ident, "op": op, "args": args or {}, "background": background, "name": name}
        try:
            self.stream.write((json.dumps(command) + "\n").encode())
        except OSError as exc:
            raise NodeLost(f"node {self.node} is gone ({exc})") from None
        with self.lock:
            self.arrived.wait_for(lambda: ident in self.replies or self.closed, timeout)
            if ident in self.replies:
                return self.replies.pop(ident)
            if self.closed:
                raise NodeLost(f"node {self.node} stopped answering during '{op}': {self._log_tail()}")
        raise NodeLost(f"node {self.node} did not answer '{op}' within {timeout:.0f} s")

    def _log_tail(self) -> str:
        try:
            self.log.flush()
            return Path(self.log.name).read_bytes()[-400:].decode(errors="replace").strip() or "no output"
        except OSError:
            return "no log"

    def close(self) -> None:
        self.stopping = True
        self.stream.close()
        self.reader.join(timeout=2)
        self.log.close()
