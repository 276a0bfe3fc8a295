"""Probe which kernel features a node can use (for ``labctl doctor``).

Each probe really tries the feature on a scratch dummy interface inside the
node's own namespace, and says what labctl uses when it is missing.
"""

from __future__ import annotations

import socket
import time

from .protocol import ProbeReply
from .system import tried


SCRATCH = "lcprobe0"


def probe_netem() -> tuple[bool, str]:
    ok, err = tried(["tc", "qdisc", "add", "dev", SCRATCH, "root", "netem", "delay", "1ms"])
    tried(["tc", "qdisc", "del", "dev", SCRATCH, "root"])
    return ok, err


def probe_tbf() -> tuple[bool, str]:
    ok, err = tried(["tc", "qdisc", "add", "dev", SCRATCH, "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "50ms"])
    tried(["tc", "qdisc", "del", "dev", SCRATCH, "root"])
    return ok, err


def probe_ifb() -> tuple[bool, str]:
    ok, err = tried(["ip", "link", "add", "lcprobeifb", "type", "ifb"])
    tried(["ip", "link", "del", "lcprobeifb"])
    return ok, err


def _iptables_rule(table: str, chain: str, *rule: str) -> tuple[bool, str]:
    ok, err = tried(["iptables", "-w", "-t", table, "-A", chain, "-o", SCRATCH, *rule])
    if ok:
        tried(["iptables", "-w", "-t", table, "-D", chain, "-o", SCRATCH, *rule])
    return ok, err


def probe_statistic() -> tuple[bool, str]:
    return _iptables_rule("filter", "OUTPUT", "-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "DROP")


def probe_tee() -> tuple[bool, str]:
    return _iptables_rule("mangle", "POSTROUTING", "-j", "TEE", "--gateway", "127.0.0.1")


def probe_nfqueue() -> tuple[bool, str]:
    ok, err = _iptables_rule("filter", "OUTPUT", "-j", "NFQUEUE", "--queue-num", "4000", "--queue-bypass")
    if not ok:
        return ok, err
    try:
        # NETLINK_NETFILTER = 12: the socket an NFQUEUE program binds to.
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
        sock.bind((0, 0))
        sock.close()
    except OSError as exc:
        return False, f"netlink netfilter socket: {exc}"
    return True, ""


def probe_nft() -> tuple[bool, str]:
    ok, err = tried(["nft", "add", "table", "inet", "lcprobe"])
    tried(["nft", "delete", "table", "inet", "lcprobe"])
    return ok, err


def probe_sock_destroy() -> tuple[bool, str]:
    """`ss -K` (INET_DIAG_DESTROY) really closing a live connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    try:
        ok, err = tried(["ss", "-K", "-t", "dst", "127.0.0.1", "dport", "=", f":{port}"])
        if not ok:
            return False, err
        client.settimeout(1)
        try:
            data = client.recv(1)
            killed = data == b""
        except OSError:
            killed = True
        return (True, "") if killed else (False, "socket survived ss -K")
    finally:
        for s in (client, server, listener):
            s.close()


def probe_conntrack() -> tuple[bool, str]:
    return tried(["conntrack", "-C"])


PROBES = {
    "netem": (probe_netem, "tc qdisc netem", "userspace NFQUEUE delay/jitter/reorder/corrupt engine with iptables statistic/TEE"),
    "tbf": (probe_tbf, "tc qdisc tbf (rate)", "no rate limits (netem's own rate where netem exists)"),
    "ifb": (probe_ifb, "IFB devices (ingress shaping)", "egress-only impairment on each sender"),
    "statistic": (probe_statistic, "iptables -m statistic (random loss)", "loss decided in the NFQUEUE engine"),
    "tee": (probe_tee, "iptables TEE (duplication)", "duplication in the NFQUEUE engine"),
    "nfqueue": (probe_nfqueue, "iptables NFQUEUE + netlink socket", "no packet rules or userspace impairments"),
    "nft": (probe_nft, "nftables", "iptables only"),
    "sock_destroy": (probe_sock_destroy, "ss -K (INET_DIAG_DESTROY)", "tcp_max_tw_buckets=0 to keep TIME_WAIT away"),
    "conntrack": (probe_conntrack, "conntrack", "no connection tracking view"),
}


def run_all() -> ProbeReply:
    # veth, not dummy: dummy devices are not built into every kernel, veth is (containers need it).
    tried(["ip", "link", "add", SCRATCH, "type", "veth", "peer", "name", SCRATCH + "p"])
    tried(["ip", "link", "set", SCRATCH, "up"])
    results = {}
    try:
        for key, (probe, what, fallback) in PROBES.items():
            started = time.monotonic()
            try:
                ok, detail = probe()
            except Exception as exc:  # a probe that crashes means "not available", with the reason
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results[key] = {"what": what, "ok": ok, "detail": "" if ok else detail, "fallback": fallback,
                            "seconds": round(time.monotonic() - started, 3)}
    finally:
        tried(["ip", "link", "del", SCRATCH])
    return ProbeReply(features=results)
