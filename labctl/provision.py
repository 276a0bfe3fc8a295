"""A node's files and startup programs, brought in line with the lab file at `up`.

Engine-neutral: it uses the engine's `exec` and `put_archive` and the in-node
agent (agent/startup.py). Files and startup are not part of a node's spec hash,
so changing a file refreshes it in its node without a new container and
without touching the other nodes; the node keeps the hash of what it holds.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from . import nodefiles
from . import nodes as agent
from .agent.protocol import FilesPrepare, FilesSeal, Startup, StartupCommand
from .engine import DeployReport, Engine
from .errors import UserError
from .plan import LabPlan, NodePlan

PARALLEL = 8
Progress = Callable[[str], None]


class StartupFailed(UserError):
    """A startup command of a node failed: the user's lab (or submission), not labctl."""


@dataclass
class NodeProvision:
    node: str
    files: str = "none"  # none | copied | refreshed | unchanged
    commands_ran: bool = False
    services_started: list[str] = field(default_factory=list)


def startup_key(node: NodePlan, files_hash: str | None) -> str:
    """What a node's startup depends on: its commands and the files they may read."""
    blob = json.dumps({"startup": [s.to_json() for s in node.startup], "files": files_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def provision_node(engine: Engine, plan: LabPlan, node: NodePlan, fresh: bool, progress: Progress) -> NodeProvision:
    done = NodeProvision(node.name)
    state = None if fresh else agent.call(engine, plan.key, node.name, "provision-state")
    try:
        files_hash = nodefiles.content_hash(list(node.files)) if node.files else None
    except (OSError, nodefiles.FilesError) as exc:
        raise UserError(f"node {node.name}: cannot read its files: {exc}") from None
    held = state.files_hash if state else None
    if files_hash != held:
        dsts = [f.dst.rstrip("/") or "/" for f in node.files]
        gone = [d for d in (state.files if state else []) if d not in dsts]
        agent.call(engine, plan.key, node.name, "files-prepare", FilesPrepare(dsts, gone))
        if node.files:
            engine.put(plan.key, node.name, "/", nodefiles.archive(list(node.files)))
        agent.call(engine, plan.key, node.name, "files-seal", FilesSeal(files_hash, dsts, [f.dst for f in node.files if f.mode == "ro"]))
        done.files = "copied" if held is None else "refreshed"
        progress(f"node {node.name}: files {done.files} ({', '.join(dsts) or 'none left'})")
    elif node.files:
        done.files = "unchanged"
    key = startup_key(node, files_hash)
    held_key = state.startup_key if state else None
    changed = key != held_key
    stopped = [s for s in (state.services if state else []) if s.state != "running"]
    if not (changed or stopped):
        return done
    request = Startup([StartupCommand(s.cmd, s.service, s.timeout) for s in node.startup], key, commands=changed, restart=changed)
    result = agent.call(engine, plan.key, node.name, "startup", request, check=False)
    if not result.ok:
        output = (result.output or "").strip()
        if result.index is None:
            raise UserError(f"node {node.name}: startup failed: {result.error}")
        raise StartupFailed(f"node {node.name}: startup command {result.index + 1} `{result.cmd}` failed: {result.reason}"
                            + (f"\n{output[-800:]}" if output else ""),
                            hint=f"its output is in the node's /var/log/labctl/startup.log (labctl exec {plan.lab} {node.name} -- cat /var/log/labctl/startup.log)")
    done.commands_ran = changed and any(not s.service for s in node.startup)
    done.services_started = [s.cmd for s in result.started]
    for cmd in done.services_started:
        progress(f"node {node.name}: service started: {cmd}")
    return done


def provision(engine: Engine, plan: LabPlan, report: DeployReport, progress: Progress | None = None) -> list[NodeProvision]:
    """Files and startup of every node, in parallel across nodes (in order within one)."""
    progress = progress or (lambda _: None)
    fresh = set(report.fresh)
    # A node without files or startup is left alone (no agent call per node on every `up`).
    todo = [node for node in plan.nodes if node.files or node.startup]
    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(todo)), thread_name_prefix="labctl-provision") as pool:
        futures = [pool.submit(provision_node, engine, plan, node, node.name in fresh, progress) for node in todo]
        return [f.result() for f in futures]
