"""Small run directories made by hand: real pcap files (written with dpkt), states,
steps, rules and expectations, for the analysis and report tests (no Docker).

The lab is the teardown lab's shape: client (10.250.1.1, link left), router
(10.250.1.2 left, 10.250.2.1 right), server (10.250.2.10, link right), with a
capture on every interface. A packet crosses the captures in path order, 40 µs
per hop; ``reach`` says how many captures see it (a drop at the router is
reach=2: the client's and the router's left one).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

T0 = 1_795_600_000.0
HOP = 0.00004
ADDRESS = {"client": "10.250.1.1", "server": "10.250.2.10"}
MAC = {"client": b"\x02\x00\x00\x00\x01\x01", "router-left": b"\x02\x00\x00\x00\x01\x02",
       "router-right": b"\x02\x00\x00\x00\x02\x01", "server": b"\x02\x00\x00\x00\x02\x0a"}
PATH = [("client", "left"), ("router", "left"), ("router", "right"), ("server", "right")]
FLAGS = {"F": dpkt.tcp.TH_FIN, "S": dpkt.tcp.TH_SYN, "R": dpkt.tcp.TH_RST, "P": dpkt.tcp.TH_PUSH, "A": dpkt.tcp.TH_ACK}
NODES = {"client": {"role": "host", "interfaces": {"left": "10.250.1.1/24"}},
         "router": {"role": "router", "interfaces": {"left": "10.250.1.2/24", "right": "10.250.2.1/24"}},
         "server": {"role": "host", "interfaces": {"right": "10.250.2.10/24"}}}
LINKS = {"left": {"subnet": "10.250.1.0/24", "endpoints": ["client", "router"]},
         "right": {"subnet": "10.250.2.0/24", "endpoints": ["router", "server"]}}


@dataclass
class Run:
    """A run being written: call ``send``, ``state``, ``step``, ``rule``, then ``write``."""

    name: str
    client_port: int = 40000
    server_port: int = 5000
    isn: dict = field(default_factory=lambda: {"client": 1000, "server": 900_000})
    records: dict = field(default_factory=lambda: {point: [] for point in PATH})
    ip_id: dict = field(default_factory=lambda: {"client": 100, "server": 700})
    states: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    expect: list = field(default_factory=list)
    status: str = "complete"
    observers: dict = field(default_factory=lambda: {"tracepoints": True})

    def packet(self, sender: str, flags: str, seq: int, ack: int, data: bytes, ip_id: int, window: int, wscale: int | None,
               seq_absolute: bool = False) -> bytes:
        receiver = "server" if sender == "client" else "client"
        ports = (self.client_port, self.server_port) if sender == "client" else (self.server_port, self.client_port)
        opts = b""
        if "S" in flags:
            opts += b"\x02\x04\x05\xb4"  # MSS 1460
            if wscale is not None:
                opts += b"\x01\x03\x03" + bytes([wscale])
        opts += b"\x01" * ((4 - len(opts) % 4) % 4)
        absolute_seq = seq if seq_absolute else (self.isn[sender] + seq) % 2**32
        absolute_ack = (self.isn[receiver] + ack) % 2**32 if "A" in flags else 0
        tcp = dpkt.tcp.TCP(sport=ports[0], dport=ports[1], seq=absolute_seq, ack=absolute_ack, win=window,
                           flags=sum(FLAGS[f] for f in flags), opts=opts, data=data)
        tcp.off = (20 + len(opts)) // 4
        ip = dpkt.ip.IP(src=socket.inet_aton(ADDRESS[sender]), dst=socket.inet_aton(ADDRESS[receiver]), p=dpkt.ip.IP_PROTO_TCP,
                        ttl=64, id=ip_id, data=tcp, df=1)
        ip.len = 20 + len(bytes(tcp))
        return bytes(ip)

    def send(self, t: float, sender: str, flags: str, seq: int, ack: int = 0, data: bytes = b"", *, reach: int = 4,
             window: int = 502, wscale: int | None = 7, start: int = 0, ip_id: int | None = None, seq_absolute: bool = False,
             copies_from: int | None = None) -> None:
        """One transmission at ``t`` ms after T0. ``start``: the first capture (in the sender's path order) that sees it,
        e.g. 2 for a packet a router made; ``copies_from``: captures from this one on see it twice (a duplicating router)."""
        if ip_id is None:
            self.ip_id[sender] += 1
            ip_id = self.ip_id[sender]
        raw = self.packet(sender, flags, seq, ack, data, ip_id, window, wscale, seq_absolute)
        path = PATH if sender == "client" else list(reversed(PATH))
        for hop, point in enumerate(path[:reach]):
            if hop < start:
                continue
            when = T0 + t / 1000 + hop * HOP
            self.records[point].append((when, raw))
            if copies_from is not None and hop >= copies_from:
                self.records[point].append((when + 0.0002, raw))

    def state(self, t: float, node: str, old: str, new: str) -> None:
        local, remote = (f"10.250.1.1:{self.client_port}", f"10.250.2.10:{self.server_port}")
        if node == "server":
            local, remote = remote, local
        self.states.append({"t": T0 + t / 1000, "source": "tracepoint", "event": "inet_sock_set_state", "local": local,
                            "remote": remote, "oldstate": old, "newstate": new, "node": node})

    def time_wait(self, t: float, node: str = "client") -> None:
        """TIME_WAIT as the sampler sees it (the tracepoint shows FIN_WAIT2 -> CLOSE)."""
        local, remote = (f"10.250.1.1:{self.client_port}", f"10.250.2.10:{self.server_port}")
        self.states.append({"t": T0 + t / 1000, "event": "state", "state": "TIME_WAIT", "local": local, "remote": remote,
                            "timer": "time_wait", "expires_ms": 59990, "node": node, "source": "sample"})

    def sample(self, t: float, node: str, state: str, *, event: str = "state", timewait: bool = False, expires_ms: int | None = None) -> None:
        """What the sampler writes: a socket seen in a state (or gone), ``t`` ms after T0."""
        local, remote = (f"10.250.1.1:{self.client_port}", f"10.250.2.10:{self.server_port}")
        if node == "server":
            local, remote = remote, local
        self.states.append({"t": T0 + t / 1000, "event": event, "state": state, "local": local, "remote": remote,
                            "timer": "time_wait" if timewait else None, "timewait": timewait, "expires_ms": expires_ms,
                            "cookie": 7, "node": node, "source": "sample"})

    def step(self, t: float, kind: str, node: str | None, args: dict | str | None = None, *, name: str | None = None,
             ok: bool = True, errno: str | None = None, result: dict | None = None, duration: float = 0.2) -> None:
        index = len(self.steps)
        self.steps.append({"index": index, "kind": kind, "node": node, "as": name, "note": None,
                           "args": {"node": node, kind: args}, "t_start": T0 + t / 1000, "t_end": T0 + (t + duration) / 1000,
                           "ok": ok, "errno": errno, "result": result or {}, "error": None, "background": False})

    def rule(self, t: float, action: str, rule: str, sender: str, flags: str, seq: int, ack: int, length: int = 0) -> None:
        receiver = "server" if sender == "client" else "client"
        ports = (self.client_port, self.server_port) if sender == "client" else (self.server_port, self.client_port)
        self.rules.append({"t": T0 + t / 1000, "node": "router", "rule": rule, "action": action,
                           "packet": {"src": f"{ADDRESS[sender]}:{ports[0]}", "dst": f"{ADDRESS[receiver]}:{ports[1]}", "flags": flags,
                                      "seq": (self.isn[sender] + seq) % 2**32, "ack": (self.isn[receiver] + ack) % 2**32, "len": length}})

    def write(self, root: Path, judge: bool = True) -> Path:
        directory = root / self.name
        (directory / "pcaps").mkdir(parents=True)
        for (node, iface), records in self.records.items():
            with open(directory / "pcaps" / f"{node}-{iface}.pcap", "wb") as fh:
                writer = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
                for when, raw in sorted(records, key=lambda r: r[0]):
                    src, dst = (MAC["client"], MAC["router-left"]) if iface == "left" else (MAC["router-right"], MAC["server"])
                    writer.writepkt(bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=dpkt.ethernet.ETH_TYPE_IP, data=raw)), ts=when)
        times = [when for records in self.records.values() for when, _ in records] + [s["t_end"] for s in self.steps]
        run = {"schema_version": 1, "labctl_version": "test", "lab": "synth", "scenario": self.name, "label": self.name,
               "description": f"synthetic {self.name}", "params": {}, "matrix_point": {}, "status": self.status, "reason": None,
               "started": T0, "ended": max(times, default=T0) + 0.1, "host": {"kernel": "synthetic"}, "observers": self.observers,
               "nodes": NODES, "links": LINKS, "steps": [], "expect": self.expect, "impairments": []}
        (directory / "run.json").write_text(json.dumps(run))
        for name, records in (("states.jsonl", self.states), ("steps.jsonl", self.steps), ("rules.jsonl", self.rules)):
            if records:
                (directory / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        if judge:
            from labctl.analyze.verdicts import judge as judge_run

            (directory / "verdicts.json").write_text(json.dumps({"schema_version": 1, "verdicts": [v.to_json() for v in judge_run(directory)]}))
        return directory


def handshake(run: Run, t: float = 10.0) -> float:
    run.step(t - 1, "connect", "client", {"to": "server", "port": run.server_port}, name="c")
    run.state(t - 0.5, "client", "CLOSE", "SYN_SENT")
    run.send(t, "client", "S", 0, window=64240)
    run.state(t + 0.2, "server", "LISTEN", "SYN_RECV")
    run.send(t + 0.3, "server", "SA", 0, 1, window=65160)
    run.state(t + 0.5, "client", "SYN_SENT", "ESTABLISHED")
    run.send(t + 0.6, "client", "A", 1, 1)
    run.state(t + 0.8, "server", "SYN_RECV", "ESTABLISHED")
    run.send(t + 5, "client", "PA", 1, 1, b"hello")
    run.send(t + 5.3, "server", "A", 1, 6)
    return t + 10


def normal_close() -> Run:
    run = Run("normal-close")
    t = handshake(run)
    run.step(t, "close", "client", "c")
    run.state(t + 0.1, "client", "ESTABLISHED", "FIN_WAIT1")
    run.send(t + 0.2, "client", "FA", 6, 1)
    run.state(t + 0.4, "server", "ESTABLISHED", "CLOSE_WAIT")
    run.step(t + 20, "close", "server", "s")
    run.state(t + 20.1, "server", "CLOSE_WAIT", "LAST_ACK")
    run.send(t + 20.2, "server", "FA", 1, 7)
    run.state(t + 20.4, "client", "FIN_WAIT1", "FIN_WAIT2")
    run.send(t + 20.5, "client", "A", 7, 2)
    run.state(t + 20.6, "client", "FIN_WAIT2", "CLOSE")
    run.time_wait(t + 22)
    run.state(t + 20.8, "server", "LAST_ACK", "CLOSE")
    run.expect = [{"segments": {"from": "client", "to": "server", "flags": "F", "count": 1}},
                  {"states": {"node": "client", "sequence": ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]}},
                  {"no_segments": {"flags": "R"}, "name": "no reset"}]
    return run


def lost_final_ack() -> Run:
    """The router drops the client's final ACK; the server retransmits its FIN after 200 ms; TIME_WAIT answers it."""
    run = Run("lost-final-ack")
    t = handshake(run)
    run.send(t + 0.2, "client", "FA", 6, 1)
    run.state(t + 0.1, "client", "ESTABLISHED", "FIN_WAIT1")
    run.state(t + 0.4, "server", "ESTABLISHED", "CLOSE_WAIT")
    run.state(t + 20.1, "server", "CLOSE_WAIT", "LAST_ACK")
    run.send(t + 20.2, "server", "FA", 1, 7)
    run.state(t + 20.4, "client", "FIN_WAIT1", "FIN_WAIT2")
    run.send(t + 20.5, "client", "A", 7, 2, reach=2)  # left the client, never reached the server
    run.rule(t + 20.55, "drop", "lose_ack", "client", "A", 7, 2)
    run.state(t + 20.6, "client", "FIN_WAIT2", "CLOSE")
    run.time_wait(t + 22)
    run.send(t + 220.2, "server", "FA", 1, 7)  # the RTO fired: the same FIN again
    run.send(t + 220.5, "client", "A", 7, 2)  # answered from TIME_WAIT: the same ACK again
    run.state(t + 220.7, "server", "LAST_ACK", "CLOSE")
    run.expect = [{"segments": {"from": "server", "to": "client", "flags": "F", "retransmission": True, "count": 1}},
                  {"segments": {"from": "client", "to": "server", "flags": "=A", "at": "server", "count": 2}},
                  {"no_segments": {"flags": "R"}}]
    return run


def resets() -> Run:
    """Three RSTs: an abort (SO_LINGER 0), a reply to a FIN for a socket that is gone, and a refused SYN."""
    run = Run("resets")
    t = handshake(run)
    run.send(t, "client", "RA", 6, 1)  # abort: close() with a zero linger
    run.server_port = 5001
    run.send(t + 50, "client", "S", 0, window=64240)
    run.send(t + 50.3, "server", "RA", 0, 1, wscale=None)  # refused: nothing listens on 5001
    run.server_port = 5002
    run.isn = {"client": 70_000, "server": 3_000_000}
    t = handshake(run, t + 100)
    run.send(t, "client", "FA", 6, 1)
    run.send(t + 0.3, "server", "A", 1, 7)
    run.send(t + 1, "server", "FA", 1, 7)
    run.send(t + 1.2, "client", "R", 7, 0, wscale=None)  # reply: the client's socket was already gone
    run.expect = [{"segments": {"flags": "R", "count": 3}}]
    return run


def duplicated() -> Run:
    """The router duplicates a data segment: the server's captures see it twice, the client's once."""
    run = Run("duplicated")
    t = handshake(run)
    run.send(t, "client", "PA", 6, 1, b"twice", copies_from=2)
    run.rule(t + 0.05, "duplicate", "dup", "client", "PA", 6, 1, 5)
    run.send(t + 0.5, "server", "A", 1, 11)
    run.send(t + 0.7, "server", "A", 1, 11)  # the duplicate's ACK: a duplicate ACK
    return run


def old_duplicate() -> Run:
    """Connection 1's data segment, held by the router, is released into connection 2 on the same 4-tuple."""
    run = Run("old-duplicate")
    t = handshake(run)
    old_ip_id = run.ip_id["client"] + 1
    run.send(t, "client", "PA", 6, 1, b"OLD-DATA")
    old_seq, old_ack = run.isn["client"] + 6, run.isn["server"] + 1
    run.send(t + 0.3, "server", "A", 1, 14)
    run.send(t + 1, "client", "FA", 14, 1)
    run.send(t + 1.3, "server", "FA", 1, 15)
    run.send(t + 1.6, "client", "A", 15, 2)
    run.isn = {"client": 500_000_000, "server": 7_000_000}  # connection 2: new ISNs
    t = handshake(run, t + 30)
    # The held copy, exactly as it was: only the router's right capture and the server see it.
    raw = run.packet("client", "PA", old_seq, old_ack - run.isn["server"], b"OLD-DATA", old_ip_id, 502, None, seq_absolute=True)
    for hop, point in enumerate(PATH[2:], start=2):
        run.records[point].append((T0 + (t + 5) / 1000 + hop * HOP, raw))
    run.send(t + 5.3, "server", "A", 6, 6)  # the server answers the unacceptable segment with an ACK
    return run


def bulk(count: int = 3000) -> Run:
    """A long transfer: ``count`` data segments and their ACKs, with one segment dropped and retransmitted."""
    run = Run(f"bulk-{count}")
    t = handshake(run)
    seq = 6
    lost = count // 2
    for i in range(count):
        if i == lost:
            run.send(t, "client", "PA", seq, 1, b"x" * 100, reach=2)
            run.rule(t + 0.05, "drop", "lose", "client", "PA", seq, 1, 100)
            run.send(t + 3, "client", "PA", seq, 1, b"x" * 100)  # its retransmission
            t += 3
        else:
            run.send(t, "client", "PA", seq, 1, b"x" * 100)
        run.send(t + 0.2, "server", "A", 1, seq + 100)
        seq += 100
        t += 0.5
    run.send(t, "client", "FA", seq, 1)
    run.send(t + 0.3, "server", "FA", 1, seq + 1)
    run.send(t + 0.6, "client", "A", seq + 1, 2)
    return run
