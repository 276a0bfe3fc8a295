"""Link impairments in a node: netem where the kernel has it, the same meaning without it.

    python3 -m labctl.agent impair JSON

JSON: ``{"interfaces": {IFACE: {"settings": {...}, "peer": ADDRESS | null}, ...},
"origin": "lab" | "runtime" | "scenario", "mechanism": "auto" | "netem" | "fallback"}``.
Settings are plain numbers: ``delay_ms``, ``jitter_ms``, ``distribution`` (uniform|normal),
``loss_pct``, ``loss_correlation_pct``, ``duplicate_pct``, ``reorder_pct``, ``corrupt_pct``,
``rate_bit`` and ``limit`` (packets); ``{}`` clears the interface. Impairments act on
the interface's egress, so one direction of a link belongs to the node that sends onto it.

Mechanisms, per interface:

- ``netem``: one ``tc qdisc replace ... root netem`` with every setting (netem's own rate and
  limit included); tried first, and used when the kernel accepts it.
- ``fallback`` (no sch_netem): the kernel where it can, in a chain of mangle/POSTROUTING of
  our own: random loss with ``-m statistic`` (DROP), duplication with ``TEE --gateway PEER``
  when the link has two endpoints (every packet leaving onto it goes to that peer); rate and
  limit with a tbf root qdisc. What the kernel cannot do (delay, jitter, reordering,
  corruption, correlated loss, duplication on a shared segment) goes to the userspace
  NFQUEUE engine (``shaper.py``), started, reloaded (SIGHUP) and stopped here.
- ``tbf``: rate (and limit) alone, the same on every kernel.

``LABCTL_IMPAIR_MECHANISM=fallback`` (or ``"mechanism": "fallback"``) forces the fallback on
a kernel that has netem, so both can be tested on one machine.

What is in force is kept per interface in ``/run/labctl/impair/IFACE.json`` (settings,
mechanism, which mechanism does each setting, the shaper's queue and pid); ``inspect``
reports it. Origin ``lab`` (what the lab file asks, at every ``up``/``run``) is applied
only when the file's wish changed since it was last applied, so a runtime change survives
``labctl run`` until the file itself changes.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .protocol import MECHANISM_ENV, MECHANISMS, PARTS, Impair, ImpairReply, command_line, needs_netem, normalize
from .system import run
from .system import read_json, write_json

STATE_DIR = "/run/labctl/impair"
CHAIN_PREFIX = "LCIMP-"          # one mangle chain per impaired interface (iptables allows 28 chars)
QUEUES = range(200, 1000)        # shaper queue numbers (the actor's packet rules use 100)
MTU_FRAME = 1514                 # bytes a full Ethernet frame takes in a qdisc's accounting
READY_TIMEOUT = 10.0


# --- the netem path ------------------------------------------------------------------------

def _us(ms: float) -> str:
    return f"{round(ms * 1000)}us"


def _pct(value: float) -> str:
    return f"{value:g}%"


def netem_args(settings: dict) -> list[str]:
    """netem's own words for the settings (tc-netem(8)); every one is given, since a change resets the others.

    The queue limit is always given: the fallback engine's default (10000 packets held), not
    netem's 1000, which 50 ms of delay at 20,000 packets/s would already overflow."""
    from .shaper import DEFAULT_LIMIT

    args: list[str] = ["limit", str(int(settings.get("limit") or DEFAULT_LIMIT))]
    if settings.get("delay_ms") or settings.get("jitter_ms"):
        args += ["delay", _us(settings.get("delay_ms", 0))]
        if settings.get("jitter_ms"):
            args.append(_us(settings["jitter_ms"]))
            if settings.get("distribution", "uniform") != "uniform":
                args += ["distribution", settings["distribution"]]
    if settings.get("loss_pct"):
        args += ["loss", "random", _pct(settings["loss_pct"])]
        if settings.get("loss_correlation_pct"):
            args.append(_pct(settings["loss_correlation_pct"]))
    if settings.get("duplicate_pct"):
        args += ["duplicate", _pct(settings["duplicate_pct"])]
    if settings.get("reorder_pct"):
        args += ["reorder", _pct(settings["reorder_pct"]), "gap", "1"]
    if settings.get("corrupt_pct"):
        args += ["corrupt", _pct(settings["corrupt_pct"])]
    if settings.get("rate_bit"):
        args += ["rate", f"{int(settings['rate_bit'])}bit"]
    return args


def tbf_args(rate_bit: float, limit: int | None = None) -> list[str]:
    """A token bucket at ``rate_bit``: a burst of two frames (or 4 ms at the rate, if more) and
    a queue of ``limit`` packets, by default 100 ms at the rate (at least 10 packets)."""
    burst = max(2 * MTU_FRAME, int(rate_bit / 8 * 0.004))
    packets = limit or max(10, int(rate_bit / 8 * 0.1 / MTU_FRAME))
    return ["rate", f"{int(rate_bit)}bit", "burst", str(burst), "limit", str(packets * MTU_FRAME)]


def netem_commands(iface: str, settings: dict) -> list[list[str]]:
    """The tc argvs that make ``iface``'s egress behave as ``settings`` say, from any state."""
    settings = normalize(settings)
    if not settings:
        return [["tc", "qdisc", "del", "dev", iface, "root"]]
    if not needs_netem(settings):
        return [["tc", "qdisc", "replace", "dev", iface, "root", "tbf", *tbf_args(settings["rate_bit"], settings.get("limit"))]]
    return [["tc", "qdisc", "replace", "dev", iface, "root", "netem", *netem_args(settings)]]


# --- the fallback path -----------------------------------------------------------------------

@dataclass(frozen=True)
class FallbackPlan:
    """What the fallback does for one interface."""

    chain: str
    rules: list[list[str]]           # iptables argvs filling the interface's chain, in order
    shaper: dict | None              # the userspace engine's config, or None when the kernel does it all
    tc: list[list[str]]              # tbf for rate and limit
    parts: dict[str, str] = field(default_factory=dict)  # setting -> what does it

    def hook(self, action: str) -> list[str]:
        """The POSTROUTING rule that sends the interface's egress through the chain."""
        iface = self.chain[len(CHAIN_PREFIX):]
        return ["iptables", "-w", "-t", "mangle", action, "POSTROUTING", *(["1"] if action == "-I" else []),
                "-o", iface, "-j", self.chain]


def chain_name(iface: str) -> str:
    return CHAIN_PREFIX + iface


def fallback_plan(iface: str, settings: dict, *, peer: str | None = None, statistic: bool = True, tee: bool = True) -> FallbackPlan:
    """The fallback for ``settings`` on ``iface``: iptables rules, shaper config and tc argvs.

    ``peer``: the one other endpoint's address when the link has exactly two (then every packet
    leaving on it goes there, and TEE to it is an exact duplicate). ``statistic``/``tee``: whether
    the kernel has them (False moves that setting into the userspace engine).
    """
    from .shaper import BYPASS_MARK

    settings = normalize(settings)
    chain = chain_name(iface)
    head = ["iptables", "-w", "-t", "mangle", "-A", chain]
    rules: list[list[str]] = []
    shaper: dict = {}
    parts: dict[str, str] = {}
    engine = "nfqueue shaper"
    # The engine's own copies and re-sent packets were decided already: nothing here touches them again.
    bypass = [*head, "-m", "mark", "--mark", hex(BYPASS_MARK), "-j", "RETURN"]
    # netem's order: duplicate, then loss (a lost duplicated packet still goes out once), then the rest.
    if settings.get("duplicate_pct"):
        if peer and tee:
            rules.append([*head, "-m", "statistic", "--mode", "random", "--probability", _probability(settings["duplicate_pct"]),
                          "-j", "TEE", "--gateway", peer])
            parts["duplicate"] = "iptables TEE"
        else:
            shaper["duplicate_pct"] = settings["duplicate_pct"]
            parts["duplicate"] = engine
    if settings.get("loss_pct"):
        if statistic and not settings.get("loss_correlation_pct"):
            rules.append([*head, "-m", "statistic", "--mode", "random", "--probability", _probability(settings["loss_pct"]), "-j", "DROP"])
            parts["loss"] = "iptables statistic"
        else:
            shaper["loss_pct"] = settings["loss_pct"]
            if settings.get("loss_correlation_pct"):
                shaper["loss_correlation_pct"] = settings["loss_correlation_pct"]
            parts["loss"] = engine
    for key, word in (("delay_ms", "delay"), ("jitter_ms", "jitter"), ("reorder_pct", "reorder"), ("corrupt_pct", "corrupt")):
        if settings.get(key):
            shaper[key] = settings[key]
            parts[word] = engine
    if settings.get("jitter_ms"):
        shaper["distribution"] = settings["distribution"]
    tc: list[list[str]] = []
    if settings.get("rate_bit"):
        tc.append(["tc", "qdisc", "replace", "dev", iface, "root", "tbf", *tbf_args(settings["rate_bit"], settings.get("limit"))])
        parts["rate"] = "tbf"
    if settings.get("limit"):
        parts["limit"] = "tbf" if settings.get("rate_bit") else engine
        if shaper:
            shaper["limit"] = int(settings["limit"])
    return FallbackPlan(chain, [bypass, *rules] if rules else [], shaper or None, tc, parts)


def _probability(pct: float) -> str:
    return f"{pct / 100:.8g}"


# --- state -----------------------------------------------------------------------------------

def _state_path(iface: str) -> str:
    return os.path.join(STATE_DIR, f"{iface}.json")


def read_state(iface: str) -> dict:
    return read_json(_state_path(iface)) or {}


def _write_state(iface: str, state: dict) -> None:
    write_json(_state_path(iface), state)


def public(state: dict) -> dict:
    """What is in force on one interface, as ``inspect`` and ``impair`` report it."""
    keys = ("interface", "settings", "mechanism", "parts", "origin", "since", "netem_error", "changed")
    return {k: state.get(k) for k in keys if k in state}


def in_force() -> list[dict]:
    """Every interface with an impairment in force (for ``inspect``)."""
    if not os.path.isdir(STATE_DIR):
        return []
    result = []
    for name in sorted(os.listdir(STATE_DIR)):
        if name.endswith(".json"):
            state = read_state(name[:-5])
            if state.get("settings"):
                result.append(public(state))
    return result


# --- iptables rules ----------------------------------------------------------------------------

def _iptables_ensure(argv: list[str]) -> None:
    """Add a rule (-A or -I argv) unless it is there already."""
    action = "-A" if "-A" in argv else "-I"
    check = list(argv)
    at = check.index(action)
    check[at] = "-C"
    if action == "-I" and check[at + 2] == "1":
        del check[at + 2]
    if run(check, check=False).returncode != 0:
        run(argv)


def _iptables_remove(argv: list[str]) -> None:
    """Remove every copy of a rule given as its -A/-I argv."""
    rule = list(argv)
    action = "-A" if "-A" in rule else "-I"
    at = rule.index(action)
    rule[at] = "-D"
    if action == "-I" and rule[at + 2] == "1":
        del rule[at + 2]
    for _ in range(16):
        if run(rule, check=False).returncode != 0:
            return


def _set_chain(plan: FallbackPlan) -> None:
    """Fill the interface's chain with the plan's rules and hook it in (or take both away)."""
    if plan.rules:
        run(["iptables", "-w", "-t", "mangle", "-N", plan.chain], check=False)
        run(["iptables", "-w", "-t", "mangle", "-F", plan.chain])
        for rule in plan.rules:
            run(rule)
        # First in POSTROUTING: duplicates and losses are decided before the engine's queue.
        _iptables_ensure(plan.hook("-I"))
    else:
        _drop_chain(plan.chain)


def _drop_chain(chain: str) -> None:
    iface = chain[len(CHAIN_PREFIX):]
    _iptables_remove(["iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-o", iface, "-j", chain])
    run(["iptables", "-w", "-t", "mangle", "-F", chain], check=False)
    run(["iptables", "-w", "-t", "mangle", "-X", chain], check=False)


def _alive(pid: int | None, queue: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return b"shaper" in argv and str(queue).encode() in argv


def _shaper_files(queue: int) -> tuple[str, str, str]:
    base = os.path.join(STATE_DIR, f"shaper-{queue}")
    return f"{base}.config.json", f"{base}.stats.json", f"{base}.log"


def _start_shaper(queue: int, config: dict) -> int:
    """Start the engine in the background; return its pid once both queues are bound."""
    config_file, stats_file, log_file = _shaper_files(queue)
    write_json(config_file, config)
    try:
        os.unlink(stats_file)
    except FileNotFoundError:
        pass
    with open(log_file, "ab") as log:
        # Its own session, no pipe of ours: it outlives this command (the exec that started it).
        proc = subprocess.Popen(command_line("shaper", "--queue", str(queue), "--config-file", config_file,
                                             "--stats-file", stats_file, python=sys.executable),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if read_json(stats_file) is not None:  # written once both queues are bound: ready
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    with open(log_file) as fh:
        tail = fh.read()[-600:]
    raise RuntimeError(f"the userspace impairment engine did not start on queue {queue}: {tail.strip() or 'no output'}")


def _reload_shaper(pid: int, queue: int, config: dict) -> None:
    """New settings for a running engine: SIGHUP re-reads its config (held packets keep their due time)."""
    config_file, stats_file, _ = _shaper_files(queue)
    before = read_json(stats_file) or {}
    done_before = before.get("reloads", 0) + before.get("reload_errors", 0)
    write_json(config_file, config)
    os.kill(pid, signal.SIGHUP)
    os.kill(pid, signal.SIGUSR1)  # the stats it writes next say whether the reload took
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        stats = read_json(stats_file) or {}
        if stats.get("reload_errors", 0) > before.get("reload_errors", 0):
            raise RuntimeError(f"the userspace impairment engine refused the new settings: {config}")
        if stats.get("reloads", 0) + stats.get("reload_errors", 0) > done_before:
            return
        time.sleep(0.01)
    raise RuntimeError(f"the userspace impairment engine (pid {pid}) did not confirm the new settings")


def _stop_shaper(pid: int | None, queue: int | None) -> None:
    """SIGTERM lets every held packet go, then the engine exits."""
    if not _alive(pid, queue):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and _alive(pid, queue):
        time.sleep(0.01)
    if _alive(pid, queue):
        os.kill(pid, signal.SIGKILL)


def _free_queue(taken: set[int]) -> int:
    for queue in QUEUES:
        if queue not in taken:
            return queue
    raise RuntimeError("no free NFQUEUE number for another impaired interface")


def _queues_in_use(except_iface: str) -> set[int]:
    taken = set()
    if os.path.isdir(STATE_DIR):
        for name in os.listdir(STATE_DIR):
            if name.endswith(".json") and not name.startswith("shaper-") and name[:-5] != except_iface:
                queue = read_state(name[:-5]).get("queue")
                if queue is not None:
                    taken.add(queue)
    return taken


# --- bringing one interface from what is in force to what is wanted ---------------------------

def _clear_fallback(iface: str, state: dict, keep_qdisc: bool = False) -> None:
    from .shaper import queue_rules

    if state.get("queue") is not None:
        for rule in queue_rules(iface, state["queue"], action="-D"):
            for _ in range(4):
                if run(rule, check=False).returncode != 0:
                    break
        _stop_shaper(state.get("shaper_pid"), state.get("queue"))
    _drop_chain(chain_name(iface))
    if state.get("qdisc") and not keep_qdisc:
        run(["tc", "qdisc", "del", "dev", iface, "root"], check=False)


def _apply_fallback(iface: str, settings: dict, peer: str | None, state: dict) -> dict:
    from .shaper import queue_rules

    features = dict(state.get("features") or {"statistic": True, "tee": True})
    for _ in range(3):
        plan = fallback_plan(iface, settings, peer=peer, **features)
        try:
            _set_chain(plan)
            break
        except RuntimeError as exc:
            # A kernel without xt_statistic or xt_TEE: that setting moves into the userspace engine.
            text = str(exc)
            if "TEE" in text and features["tee"]:
                features["tee"] = False
            elif "statistic" in text and features["statistic"]:
                features["statistic"] = False
            else:
                raise
    else:
        raise RuntimeError(f"cannot set the iptables rules for {iface}")
    if plan.tc:
        for argv in plan.tc:
            run(argv)
    elif state.get("qdisc"):
        run(["tc", "qdisc", "del", "dev", iface, "root"], check=False)
    queue, pid = state.get("queue"), state.get("shaper_pid")
    if plan.shaper:
        if queue is None:
            queue = _free_queue(_queues_in_use(iface))
        if _alive(pid, queue):
            _reload_shaper(pid, queue, plan.shaper)
        else:
            pid = _start_shaper(queue, plan.shaper)
        # Appended after the chain's hook: losses and duplicates are decided before the queue.
        for rule in queue_rules(iface, queue):
            _iptables_ensure(rule)
    elif queue is not None:
        for rule in queue_rules(iface, queue, action="-D"):
            run(rule, check=False)
        _stop_shaper(pid, queue)
        queue = pid = None
    return {"mechanism": "fallback", "parts": plan.parts, "queue": queue, "shaper_pid": pid,
            "qdisc": "tbf" if plan.tc else None, "features": features}


def apply_interface(iface: str, settings: dict, *, peer: str | None = None, mechanism: str = "auto",
                    origin: str = "runtime", force: bool = False) -> dict:
    """Bring ``iface`` from what is in force to ``settings``; return (and record) what is in force then.

    ``force``: apply a lab-origin wish even when it is the one last applied (a run putting back
    what it changed)."""
    settings = normalize(settings)
    state = read_state(iface)
    lab = state.get("lab") or {}
    if origin == "lab":
        if lab == settings and not force:
            return {**(state or {"interface": iface, "settings": {}}), "changed": False}
        lab = settings
    new: dict = {"interface": iface, "settings": settings, "origin": origin, "since": time.time(), "lab": lab, "peer": peer}
    if not settings:
        _clear_fallback(iface, state)
        new.update(mechanism=None, parts={}, qdisc=None)
    elif not needs_netem(settings):
        # Rate and limit alone: a tbf, the same on every kernel.
        _clear_fallback(iface, state, keep_qdisc=True)
        for argv in netem_commands(iface, settings):
            run(argv)
        new.update(mechanism="tbf", parts={"rate": "tbf", **({"limit": "tbf"} if settings.get("limit") else {})}, qdisc="tbf")
    else:
        applied = False
        if mechanism in ("auto", "netem"):
            # Whether the kernel has netem is known by trying: the qdisc replaces whatever root there was.
            proc = run(netem_commands(iface, settings)[0], check=False)
            if proc.returncode == 0:
                _clear_fallback(iface, state, keep_qdisc=True)
                new.update(mechanism="netem", parts={word: "netem" for key, word in PARTS if settings.get(key)}, qdisc="netem")
                applied = True
            else:
                error = (proc.stderr or proc.stdout).strip() or "refused"
                if mechanism == "netem":
                    raise RuntimeError(f"netem was asked for and the kernel refused it: {error}")
                new["netem_error"] = error.splitlines()[0]
        if not applied:
            new.update(_apply_fallback(iface, settings, peer, state))
    _write_state(iface, new)
    return {**new, "changed": True}


def requested_mechanism(request: Impair) -> str:
    mechanism = os.environ.get(MECHANISM_ENV) or request.mechanism or "auto"
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)}, not {mechanism!r}")
    return mechanism


def apply(request: Impair) -> ImpairReply:
    """The agent command: every listed interface to its wanted settings, one at a time."""
    mechanism = requested_mechanism(request)
    result = {}
    os.makedirs(STATE_DIR, exist_ok=True)
    with open(os.path.join(STATE_DIR, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one change at a time per node (a run's restore, a user's command)
        for iface, wanted in request.interfaces.items():
            state = apply_interface(iface, wanted.settings, peer=wanted.peer, mechanism=mechanism,
                                    origin=request.origin, force=request.force)
            result[iface] = public(state)
    return ImpairReply(interfaces=result)
