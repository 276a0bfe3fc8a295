"""What a damaged run directory lacks, beyond what its readers find file by file.

``rundir`` and ``segments`` note what is wrong inside a file as they read it (cut short,
garbage, a bad line). This module notes what is wrong across files: a capture the run's
observers made that is not there, fewer step records than the scenario had, a run that
never finished, a directory without run.json whose nodes must be read from its captures.
"""

from __future__ import annotations

from pathlib import Path

from ..rundir import RUN_SCHEMA_VERSION, Damage, load_json, read_jsonl, type_name

JSONL_FILES = ("states.jsonl", "events.jsonl", "rules.jsonl")  # steps.jsonl: RunView reads it itself


def unusable(damage: Damage) -> bool:
    """Whether a damaged file gave nothing at all (a capture cut mid-way still gave its first packets)."""
    return not damage.partial


def nodes_from_files(run_dir: Path, nodes: dict) -> dict:
    """run.json's nodes, completed from the captures' names (NODE-IFACE.pcap) where run.json cannot say:
    all of them when it lost its nodes, a node's interfaces when only those were lost.

    A node name may hold '-': the split that names a node the other files mention wins."""
    pcaps = run_dir / "pcaps"
    names = sorted(p.stem for p in pcaps.glob("*.pcap")) if pcaps.is_dir() else []
    if nodes and all(info.get("interfaces") for info in nodes.values()):
        return nodes
    nodes = {name: {**info, "interfaces": dict(info.get("interfaces") or {})} for name, info in nodes.items()}
    known = set(nodes) | {r.get("node") for name in ("steps.jsonl", "states.jsonl", "rules.jsonl")
                          for r in read_jsonl(run_dir / name)}
    for stem in names:
        splits = [(stem[:i], stem[i + 1:]) for i, c in enumerate(stem) if c == "-"]
        if not splits:
            continue
        node, iface = next(((n, i) for n, i in splits if n in known), splits[0])
        if node in nodes and nodes[node]["interfaces"] and not all(not a for a in nodes[node]["interfaces"].values()):
            continue  # run.json knows this node's interfaces
        nodes.setdefault(node, {"role": "host", "interfaces": {}})["interfaces"].setdefault(iface, "")
    return nodes


def addresses_from_captures(nodes: dict, segments: list) -> None:
    """Fill in an interface address run.json could not give: the one address every packet of a
    host's capture has at one end (a router's capture forwards others' packets: it stays unknown)."""
    for node, info in nodes.items():
        for iface, address in info["interfaces"].items():
            if address:
                continue
            ends = [{s.src, s.dst} for s in segments if s.node == node and s.iface == iface]
            common = set.intersection(*ends) if ends else set()
            if len(common) == 1:
                info["interfaces"][iface] = common.pop()


def survey(run_dir: Path, run: dict, nodes: dict, damage: list[Damage]) -> None:
    """Add to ``damage`` what is missing or wrong across the run directory's files."""
    pcaps = run_dir / "pcaps"
    if pcaps.exists() and not pcaps.is_dir():
        damage.append(Damage("pcaps", "it is a file, not the directory of captures: no capture can be read"))
    elif not pcaps.exists():
        damage.append(Damage("pcaps", "it is missing: no capture can be read"))
    observers = (run.get("observers") or {}).get("nodes") or {}
    present = {p.name for p in pcaps.glob("*.pcap") if p.is_file()} if pcaps.is_dir() else set()
    for node, info in nodes.items():
        made = observers.get(node, {}).get("captures") if node in observers else None
        for iface in info.get("interfaces", {}):
            path = pcaps / f"{node}-{iface}.pcap"
            said = isinstance(made, list) and iface in made
            if not path.exists() and pcaps.is_dir() and (said or (not observers and run.get("status") == "complete")):
                because = f"run.json says {node} captured on {iface}" if said else f"{node} has interface {iface}"
                known = ("is inferred from the other captures" if present else
                         "is not known: no other capture is there to infer it from")
                damage.append(Damage(f"pcaps/{path.name}", f"it is missing ({because}): what crossed {node}'s {iface} {known}"))
    for name in JSONL_FILES:
        for _ in read_jsonl(run_dir / name, damage):
            pass
    if not run:
        return
    if run.get("schema_version") is None and "schema_version" not in run:
        pass  # noted by read_run
    status = run.get("status")
    if status == "running":
        damage.append(Damage("run.json", "it still says 'running': the labctl that made this run stopped before it could "
                                         "record how the run ended (it was killed, or its disk filled), unless it is still running; "
                                         "what it collected is shown"))
    elif status is None:
        damage.append(Damage("run.json", "it does not say how the run ended (no status): the run is not counted as complete"))
    planned = run.get("steps")
    if isinstance(planned, list) and status == "complete":
        recorded = {r.get("index") for r in read_jsonl(run_dir / "steps.jsonl") if "index" in r}
        lost = [i + 1 for i in range(len(planned)) if i not in recorded]
        if lost:
            shown = ", ".join(map(str, lost[:8])) + (" ..." if len(lost) > 8 else "")
            damage.append(Damage("steps.jsonl", f"it has no record of {len(lost)} of the scenario's {len(planned)} steps "
                                                f"(step{'s' if len(lost) > 1 else ''} {shown}), though the run completed: "
                                                "their results are lost"))


def stored_verdicts(run_dir: Path, damage: list[Damage] | None) -> tuple[list[dict], bool]:
    """verdicts.json's verdicts that are whole (as stored: dicts), and whether every one of them was;
    what is wrong goes to ``damage``."""
    from .results import Verdict

    found: list[Damage] = []
    data = load_json(run_dir / "verdicts.json", found, missing="the run's verdicts were not stored")
    items = data.get("verdicts") if data is not None else None
    if data is not None and not isinstance(items, list):
        found.append(Damage("verdicts.json", f"its 'verdicts' is {type_name(items)}, not a list of verdicts"))
    problems: list[str] = []
    verdicts = [v.to_json() for v in (Verdict.read(item, i, problems) for i, item in enumerate(items or [])) if v is not None]
    found += [Damage("verdicts.json", p) for p in dict.fromkeys(problems)]
    if damage is not None:
        damage.extend(d for d in found if d not in damage)
    return verdicts, isinstance(items, list) and len(verdicts) == len(items)


__all__ = ["JSONL_FILES", "RUN_SCHEMA_VERSION", "nodes_from_files", "stored_verdicts", "survey", "unusable"]
