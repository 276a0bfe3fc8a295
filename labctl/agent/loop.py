"""A transient forwarding loop between two routers, set up from inside each of them.

    python3 -m labctl.agent loop JSON

``{"action": "start", "id": ID, "dev": IFACE, "peer": ADDRESS, "partner": [ADDRESS...],
"subnets": [CIDR...], "match": {...} | null, "start_at": EPOCH, "heal_at": EPOCH}`` makes
this router send matching forwarded packets to ``peer`` (the other router, on their shared
link ``dev``), which does the same back: the packets circulate, each hop decrementing their
TTL, until it runs out (ICMP time exceeded goes to the sender) or the loop heals and they go
on, late. ``{"action": "heal"}`` heals at once; ``{"action": "status"}`` tells.

How: mangle/PREROUTING marks the packets (so only packets that come in are caught, never the
ones this router makes itself, such as its ICMP time exceeded), and a policy rule sends
marked packets through a table whose routes all lead to the peer. Packets from the partner
router itself are never marked, so its ICMP errors reach their destination too.

Both routers are told one ``start_at`` and ``heal_at`` on the host clock every container
shares: each waits for ``start_at`` to hook the mark rule in, and leaves a background process
that heals at ``heal_at``, so a scenario goes on while the loop lasts. The state is kept in
``/run/labctl/loop.json``; a newer loop replaces an older one (whose heal then does nothing).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

from .protocol import Loop, LoopReply, command_line
from .system import read_json, run, write_json

CHAIN = "LCLOOP"
MARK = 0x4C4F          # "LO"
TABLE = "4242"
PRIORITY = "4242"
STATE_DIR = "/run/labctl"
STATE_FILE = os.path.join(STATE_DIR, "loop.json")
FLAG_NAMES = {"S": "SYN", "F": "FIN", "R": "RST", "P": "PSH", "A": "ACK", "U": "URG"}


def match_args(match: dict | None) -> list[list[str]]:
    """iptables match arguments for a filter, one list per (source, destination) pair.

    ``match``: ``from``/``to`` (lists of addresses), ``proto`` (tcp|udp|icmp), ``sport``,
    ``dport``, ``flags`` (letters of SFRPAU, '.' for A; '=' first for exactly these) and
    ``payload`` (text the packet carries). Ports and flags imply tcp.
    """
    match = match or {}
    common: list[str] = []
    proto = match.get("proto")
    if proto is None and (match.get("sport") or match.get("dport") or match.get("flags")):
        proto = "tcp"
    if proto:
        common += ["-p", proto]
    if match.get("sport"):
        common += ["--sport", str(match["sport"])]
    if match.get("dport"):
        common += ["--dport", str(match["dport"])]
    if match.get("flags"):
        wanted = match["flags"]
        exact = wanted.startswith("=")
        letters = []
        for letter in wanted.lstrip("=").replace(".", "A").upper():
            if letter not in FLAG_NAMES:
                raise ValueError(f"unknown TCP flag {letter!r} in {wanted!r}; use letters of SFRPAU")
            if FLAG_NAMES[letter] not in letters:
                letters.append(FLAG_NAMES[letter])
        mask = ",".join(FLAG_NAMES.values()) if exact else ",".join(letters)
        common += ["--tcp-flags", mask, ",".join(letters)]
    if match.get("payload"):
        common += ["-m", "string", "--algo", "bm", "--string", str(match["payload"])]
    sources = match.get("from") or [None]
    targets = match.get("to") or [None]
    result = []
    for source in sources:
        for target in targets:
            result.append([*(["-s", source] if source else []), *(["-d", target] if target else []), *common])
    return result


def loop_commands(dev: str, peer: str, partner: list[str], subnets: list[str], match: dict | None) -> tuple[list[list[str]], list[str], list[list[str]]]:
    """(prepare, hook, heal): argvs that build the loop, the one that turns it on, and those that heal it."""
    mangle = ["iptables", "-w", "-t", "mangle"]
    prepare = [[*mangle, "-N", CHAIN], [*mangle, "-F", CHAIN]]
    # The partner's own packets (its ICMP time exceeded above all) route normally.
    prepare += [[*mangle, "-A", CHAIN, "-s", address, "-j", "RETURN"] for address in partner]
    prepare += [[*mangle, "-A", CHAIN, *args, "-j", "MARK", "--set-mark", hex(MARK)] for args in match_args(match)]
    prepare += [["ip", "route", "flush", "table", TABLE],
                *(["ip", "route", "replace", subnet, "via", peer, "dev", dev, "table", TABLE] for subnet in subnets),
                ["ip", "rule", "del", "priority", PRIORITY],
                ["ip", "rule", "add", "fwmark", hex(MARK), "lookup", TABLE, "priority", PRIORITY]]
    # No ICMP redirects while packets leave by the interface they came in on: conf.all.send_redirects=0
    # (set by the planner) is ORed with each interface's own, which interfaces made before it keep.
    no_redirects = ["-p", "icmp", "--icmp-type", "redirect", "-j", "DROP"]
    prepare += [[*mangle, "-D", "OUTPUT", *no_redirects], [*mangle, "-I", "OUTPUT", "1", *no_redirects]]
    hook = [*mangle, "-I", "PREROUTING", "1", "-j", CHAIN]
    # Healing unhooks the mark rule and the policy rule, and leaves the table's routes (inert
    # without the rule) until the next loop: a looping packet the link's impairment still holds
    # was routed by one of them, and deleting a route discards the packets routed by it.
    heal = [[*mangle, "-D", "PREROUTING", "-j", CHAIN],
            ["ip", "rule", "del", "priority", PRIORITY],
            [*mangle, "-D", "OUTPUT", *no_redirects]]
    return prepare, hook, heal


# Commands that may fail harmlessly: what they remove is not there (yet).
_MAY_FAIL = {("-N", CHAIN), ("rule", "del"), ("route", "flush"), ("-D", "PREROUTING"), ("-D", "OUTPUT"), ("-F", CHAIN), ("-X", CHAIN)}


def _run(argv: list[str], check: bool = True) -> None:
    may_fail = any(tuple(argv[i:i + 2]) == pair for pair in _MAY_FAIL for i in range(len(argv)))
    run(argv, check=check and not may_fail)


def _read() -> dict:
    return read_json(STATE_FILE) or {}


def _write(state: dict) -> None:
    write_json(STATE_FILE, state)


class _Lock:
    def __enter__(self):
        os.makedirs(STATE_DIR, exist_ok=True)
        self.fh = open(os.path.join(STATE_DIR, "loop.lock"), "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _heal_now(state: dict) -> dict:
    healed = None
    for argv in state.get("heal") or loop_commands("x", "0.0.0.0", [], [], None)[2]:
        _run(argv, check=False)
        healed = healed or time.time()  # the first command unhooks the mark rule: from then on nothing loops
    state = {**state, "active": False, "healed": healed}
    _write(state)
    return state


def start(config: Loop) -> LoopReply:
    prepare, hook, heal = loop_commands(config.dev, config.peer, list(config.partner), list(config.subnets), config.match)
    with _Lock():
        old = _read()
        if old.get("active"):
            _heal_now(old)  # a newer loop replaces it; its scheduled heal will find another id and do nothing
        for argv in prepare:
            _run(argv)
        wait = config.start_at - time.time()
        if wait > 0:
            time.sleep(wait)
        _run(hook)
        started = time.time()
        state = {"id": config.id, "active": True, "peer": config.peer, "dev": config.dev, "match": config.match,
                 "started": started, "heal_at": config.heal_at, "heal": heal}
        _write(state)
    # Its own session, no pipe of ours: it outlives this command.
    later = Loop(action="heal", id=config.id, at=config.heal_at)
    subprocess.Popen(command_line("loop", json.dumps(later.to_json()), python=sys.executable),
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
    return LoopReply(id=config.id, started=started, heal_at=config.heal_at)


def heal(config: Loop) -> LoopReply:
    wait = (config.at or 0) - time.time()
    if wait > 0:
        time.sleep(wait)
    with _Lock():
        state = _read()
        if not state.get("active") or (config.id and state.get("id") != config.id):
            return LoopReply(healed=False, state=_public(state))
        state = _heal_now(state)
    return LoopReply(healed=True, state=_public(state))


def _public(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "heal"}


def status() -> LoopReply:
    return LoopReply(state=_public(_read()))


def main(config: Loop) -> LoopReply:
    actions = {"start": start, "heal": heal, "status": lambda _: status()}
    if config.action not in actions:
        return LoopReply(ok=False, error=f"unknown loop action {config.action!r}; known: {', '.join(actions)}")
    return actions[config.action](config)
