"""The ``labctl`` command: argument parsing and printing over ``labctl.api``."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from . import __version__, api, environment
from .errors import UserError
from .instances import describe as describe_instance
from .instances import flag as instance_flag

app = typer.Typer(help="Build Docker labs of clients, routers and servers; impair links; run TCP scenarios; collect evidence.",
                  no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False)
image_app = typer.Typer(help="The node image every lab node runs. Example: labctl image build", no_args_is_help=True)
app.add_typer(image_app, name="image")
export_app = typer.Typer(help="A lab or a run for other tools: a Compose project, one pcapng. Example: labctl export compose teardown",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")



def _console(stderr: bool = False) -> Console:
    """rich honours NO_COLOR and colours only terminals. Piped output (a pager, grep, a
    file) is not cut to 80 columns: lines are as long as what they say, unless COLUMNS says."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    return Console(stderr=stderr, width=100_000 if piped and "COLUMNS" not in os.environ else None)


out = _console()
err = _console(stderr=True)


class Table(RichTable):
    """A table as labctl prints it: a cell too long for its column folds onto the next line,
    never cut with an ellipsis; piped, a plain layout (aligned columns, no box)."""

    def __init__(self, *args, **kwargs):
        if not out.is_terminal:
            kwargs.setdefault("box", None)
            kwargs.setdefault("pad_edge", False)
        super().__init__(*args, **kwargs)

    def add_column(self, *args, **kwargs) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)


# --- completion: lab names, scenario names, nodes (Typer's --install-completion) ----------------

def _complete_lab(incomplete: str) -> list[str]:
    from .loader import available_labs

    names = [name for name in available_labs() if name.startswith(incomplete)]
    if os.sep in incomplete or incomplete.startswith("."):
        from pathlib import Path

        parent = Path(incomplete).parent if not incomplete.endswith(os.sep) else Path(incomplete)
        if parent.is_dir():
            names += [str(p) + (os.sep if p.is_dir() else "") for p in sorted(parent.iterdir())
                      if str(p).startswith(incomplete.rstrip(os.sep)) and (p.is_dir() or p.suffix in (".yaml", ".yml"))]
    return names


def _typed_words() -> list[str]:
    """The command line being completed, as the shell's completion hands it over (bash:
    COMP_WORDS up to COMP_CWORD; zsh, fish, PowerShell: _TYPER_COMPLETE_ARGS)."""
    import shlex

    raw = os.environ.get("_TYPER_COMPLETE_ARGS") or os.environ.get("COMP_WORDS", "")
    try:
        words = shlex.split(raw)
    except ValueError:
        words = raw.split()
    if "COMP_CWORD" in os.environ and os.environ["COMP_CWORD"].isdigit():
        words = words[:int(os.environ["COMP_CWORD"])]
    return words


def _completion_lab(ctx: typer.Context):
    """The lab named earlier on the command line, loaded with its -p parameters; None if it cannot be.

    Read from the words typed so far: while an option waits for its value, click's resilient
    parsing leaves every parameter at its default (and Typer hands completions no words)."""
    takes_value = {opt for p in ctx.command.params if p.param_type_name == "option" and not getattr(p, "is_flag", False)
                   for opt in p.opts}
    words = _typed_words()
    if ctx.info_name in words:
        words = words[words.index(ctx.info_name) + 1:]
    ref, params, i = ctx.params.get("lab"), [], 0
    while i < len(words):
        word = words[i]
        if word in takes_value:
            if word in ("-p", "--param") and i + 1 < len(words):
                params.append(words[i + 1])
            i += 2
            continue
        if not word.startswith("-") and ref is None:
            ref = word
        i += 1
    if not ref:
        return None
    try:
        from .loader import load_lab

        return load_lab(ref, api.parse_params(params))
    except Exception:  # completion must never fail loudly
        return None


def _complete_scenario(ctx: typer.Context, incomplete: str) -> list[str]:
    from .loader import scenario_files

    loaded = _completion_lab(ctx)
    if loaded is None or loaded.path is None:
        return []
    return [name for name in scenario_files(loaded.path) if name.startswith(incomplete)]


def _complete_node(ctx: typer.Context, incomplete: str) -> list[str]:
    loaded = _completion_lab(ctx)
    return [] if loaded is None else [name for name in loaded.lab.nodes if name.startswith(incomplete)]


def _complete_node_interface(ctx: typer.Context, incomplete: str) -> list[str]:
    loaded = _completion_lab(ctx)
    if loaded is None:
        return []
    node, colon, _ = incomplete.partition(":")
    if not colon:
        return [name for name in loaded.lab.nodes if name.startswith(incomplete)]
    interfaces = [link.name for link in loaded.lab.links if node in link.endpoints] + ["any"]
    return [f"{node}:{iface}" for iface in interfaces if f"{node}:{iface}".startswith(incomplete)]


LAB_ARG = typer.Argument(..., help="A built-in lab's name, a lab directory, or a lab file.", autocompletion=_complete_lab)
PARAM_OPT = typer.Option([], "--param", "-p", help="KEY=VALUE rendered into the lab file (Jinja2). Repeatable.")
NO_WAIT_OPT = typer.Option(False, "--no-wait", help="If another labctl is working on the lab, fail (exit 2) instead of waiting for it.")
INSTANCE_OPT = typer.Option(None, "--instance", help="Which isolated copy of the lab (letters, digits, _); default: the lab itself (instance 'default').")


@contextmanager
def progress_shown(enabled: bool = True) -> Iterator:
    """A spinner with the latest step; each step is also kept as a dim line on stderr."""
    # Messages are plain text: "fin-to-closed[method=kill]" must not be taken for markup and vanish.
    if not enabled or not err.is_terminal:
        yield (lambda message: err.print(f"[dim]· {escape(message)}[/dim]", highlight=False)) if enabled else (lambda _: None)
        return
    with err.status("working") as status:
        def show(message: str) -> None:
            err.print(f"[dim]· {escape(message)}[/dim]", highlight=False)
            status.update(escape(message))
        yield show


@app.command()
def up(lab: str = LAB_ARG, param: List[str] = PARAM_OPT,
       offline: bool = typer.Option(False, help="Build the node image from the offline Debian bootstrap, never a registry."),
       as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
       no_wait: bool = NO_WAIT_OPT, instance: Optional[str] = INSTANCE_OPT) -> None:
    """Bring a lab up, or bring a running lab in line with its file. Running it twice changes nothing.

    With --instance NAME, another copy of the lab beside the others: its own containers, networks and
    subnets (fixed subnets of the lab file are moved to free ones, and every address in them with them).

    Example: labctl up teardown (or: labctl up teardown --instance b)
    """
    with progress_shown(not as_json) as progress:
        result = api.up(lab, api.parse_params(param), offline=offline, progress=progress, wait=not no_wait, instance=instance)
    if as_json:
        out.print_json(data={"lab": result.plan.lab, "instance": result.plan.instance, "image": result.image.tag, "created": result.report.created,
                             "removed": result.report.removed, "kept": result.report.kept, "seconds": round(result.seconds, 3),
                             "plan": result.plan.to_json()})
        return
    changed = "up" if result.report.created or result.report.removed else "already up, nothing changed"
    out.print(f"[bold]{escape(describe_instance(result.plan.lab, result.plan.instance))}[/bold]: {changed} in {result.seconds:.1f} s "
              f"(image {result.image.tag}, base {result.image.base_kind})")
    if len(result.plan.nodes) > STATUS_TABLE_NODES:
        # The up itself checked every node configured; asking each again for a table of a hundred
        # rows would take longer than the up (one call per node). `labctl status` has the table.
        routers = sum(1 for node in result.plan.nodes if node.role == "router")
        links = len(result.plan.links)
        out.print(f"{len(result.plan.nodes)} nodes ({routers} router{'' if routers == 1 else 's'}), {links} link{'' if links == 1 else 's'}, "
                  f"every node configured; labctl status {escape(result.plan.lab)}{escape(instance_flag(result.plan.instance))} shows each",
                  highlight=False, soft_wrap=True)
        return
    _print_status(api.status(result.plan.lab, instance=result.plan.instance))


@app.command()
def run(lab: str = LAB_ARG,
        scenario: List[str] = typer.Option([], "--scenario", "-s", help="A scenario of the lab (repeatable); all when omitted.",
                                      autocompletion=_complete_scenario),
        param: List[str] = PARAM_OPT,
        results: Optional[str] = typer.Option(None, help="Where run directories go (default ./results or $LABCTL_RESULTS)."),
        as_json: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
        no_wait: bool = NO_WAIT_OPT, instance: Optional[str] = INSTANCE_OPT) -> None:
    """Run scenarios on a lab (bringing it up if needed); record everything in a run directory.

    Exit status: 0 when every expectation held, 1 when one failed, 3 when none failed but one
    could not be decided, 2 on a usage or environment error, 130 when interrupted.

    Example: labctl run teardown -s lost-final-ack --json
    """
    from pathlib import Path

    from .analyze.results import exit_status

    from .run import RunInterrupted

    interrupted = None
    try:
        with progress_shown(not as_json) as progress:
            outcomes = api.run(lab, scenario, api.parse_params(param), root=Path(results) if results else None, progress=progress,
                               wait=not no_wait, instance=instance)
    except RunInterrupted as stop:
        interrupted, outcomes = stop, stop.results  # what was recorded is shown; nothing after it ran
    statuses = [exit_status(r.verdicts, r.status == "complete") for r in outcomes]
    if as_json:
        out.print_json(data=[{"scenario": r.scenario, "run_dir": str(r.path), "status": r.status, "passed": r.passed,
                              "outcome": OUTCOME_OF_STATUS[code], "verdicts": [v.to_json() for v in r.verdicts]}
                             for r, code in zip(outcomes, statuses)])
    else:
        for outcome, code in zip(outcomes, statuses):
            _print_verdicts(outcome, code)
        passed, undecided = statuses.count(0), statuses.count(3)
        out.print(f"[bold]{passed} of {len(outcomes)} run(s) passed[/bold]"
                  + (f", [yellow]{undecided} undecided[/yellow] (evidence this machine could not collect)" if undecided else ""))
    if interrupted is not None:
        err.print(f"interrupted (Ctrl-C) during {escape(interrupted.result.scenario)}: it is kept as incomplete in "
                  f"{escape(str(interrupted.result.path))}; the scenarios after it did not run")
        raise typer.Exit(130)
    raise typer.Exit(1 if 1 in statuses else 3 if 3 in statuses else 0)


OUTCOME_OF_STATUS = {0: "pass", 1: "fail", 3: "undecided"}
VERDICT_WORDS = {"pass": "[green]ok[/green]", "fail": "[red]FAIL[/red]", "undecided": "[yellow]undecided[/yellow]"}


def _print_verdicts(outcome, code: int) -> None:
    heading = {0: "[green]passed[/green]", 1: "[red]FAILED[/red]", 3: "[yellow]UNDECIDED[/yellow]"}[code]
    table = Table(title=f"{escape(outcome.scenario)}: {heading} ({outcome.status})  {escape(str(outcome.path))}", title_justify="left")
    table.add_column("")
    table.add_column("expectation")
    table.add_column("observed")
    for verdict in outcome.verdicts:
        title = (verdict.name + "\n") if verdict.name else ""
        table.add_row(VERDICT_WORDS[verdict.outcome], escape(title + verdict.description), escape(verdict.observed))
        if verdict.undecided and verdict.reason and verdict.reason not in verdict.observed:
            table.add_row("", "", f"[yellow]why undecided: {escape(verdict.reason)}[/yellow]")
        if verdict.failed:
            for item in verdict.evidence[:5]:
                table.add_row("", "", f"[dim]{escape(item.text)[:160]}[/dim]")
    out.print(table)


@app.command()
def report(runs: Optional[List[str]] = typer.Argument(None, help="A run directory, or a lab (its latest run); two to compare. Default: the latest run."),
           fmt: Optional[str] = typer.Option(None, "--format", "-f", help="term (default), md, html or json; from -o's extension when omitted."),
           output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the report to this file."),
           results: Optional[str] = typer.Option(None, help="Where run directories are (default ./results or $LABCTL_RESULTS)."),
           full: bool = typer.Option(False, "--full", help="Never fold a large run's ladder and tables."),
           print_schema: bool = typer.Option(False, "--schema", help="Print the JSON Schema of the json format and exit.")) -> None:
    """Turn a run into evidence: verdicts with their evidence, a ladder diagram, state timelines (from the run directory alone).

    Example: labctl report teardown -o report.html
    """
    from pathlib import Path

    from .report import format_for

    if print_schema:
        sys.stdout.write(json.dumps(api.report_schema(), indent=2) + "\n")
        return
    target = Path(output) if output else None
    chosen = fmt or format_for(target)
    text = api.report(runs or [], format=chosen, root=Path(results) if results else None,
                      color=target is None and out.is_terminal and not out.no_color, width=out.width if target is None and out.is_terminal else None,
                      fold=not full)
    if target is None:
        sys.stdout.write(text)
        return
    target.write_text(text)
    err.print(f"wrote {escape(str(target))} ({chosen})", highlight=False)


@app.command()
def sweep(lab: str = LAB_ARG,
          scenario: Optional[str] = typer.Argument(None, help="The scenario every run plays (or `scenario:` in the sweep file).",
                                                   autocompletion=_complete_scenario),
          param: List[str] = typer.Option([], "--param", "-p", help="NAME=VALUES: a range 0..30:5% (ends included, a unit on any part), "
                                                                    "a list 10ms,50ms, or one value (fixed). Repeatable."),
          repeat: Optional[int] = typer.Option(None, "--repeat", "-r", help="Runs per combination (default 1)."),
          parallel: Optional[int] = typer.Option(None, "--parallel", "-j", help="Runs at once (default 1), each worker on a lab instance of its own (sw1 ... swN), taken down when the sweep ends."),
          output: Optional[str] = typer.Option(None, "--output", "-o", help="The sweep directory; run the same sweep into it again to resume. "
                                                                           "Default: results/sweeps/LAB-SCENARIO-<grid hash>."),
          metric: Optional[str] = typer.Option(None, "--metric", "-m", help="What the chart shows beside the pass rate: transfer_time (default), "
                                                                           "retransmissions, fin_retransmission_delay, time_wait, duration, segments, step:NAME."),
          file: Optional[str] = typer.Option(None, "--file", "-f", help="A sweep file (a `sweep:` block): a path, or NAME for the lab's sweeps/NAME.yaml."),
          seed: Optional[int] = typer.Option(None, help="The sweep's seed (each run's is derived from it; default: random, kept in sweep.json)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and exit.")) -> None:
    """Run a scenario at every combination of parameters, repeated; one run directory each, then a summary (CSV, Markdown, chart).

    Exit status: 0 when every run finished (failed verdicts are results: see the summary), 2 on a usage or environment error,
    130 when interrupted (run the same command again to resume).

    Example: labctl sweep lossy-transfer transfer -p loss=0..20:5% --repeat 3
    """
    import hashlib
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from . import sweep as sweeps
    from .rundir import results_root

    spec = sweeps.make_spec(lab, scenario, [sweeps.parse_axis(p) for p in param], repeat=repeat, metric_name=metric, seed=seed,
                            parallel=parallel, file=file)
    if dry_run:
        for task in sweeps.expand(spec, spec.seed or 0):
            out.print(f"{task.id}  " + " ".join(f"{k}={v}" for k, v in task.params.items() if k != "seed"), highlight=False)
        out.print(f"{spec.size} run(s)")
        return
    grid = hashlib.sha256(json.dumps(spec.identity(), sort_keys=True).encode()).hexdigest()[:8]
    target = Path(output) if output else results_root() / "sweeps" / f"{Path(spec.lab).name}-{spec.scenario}-{grid}"
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=err, disable=not err.is_terminal)
    bar_task = bar.add_task("sweep", total=spec.size)

    def show(event) -> None:
        if event.kind == "plan":
            bar.update(bar_task, total=event.total, completed=event.finished)
            err.print(f"sweep {escape(str(target))}: {event.total} run(s); {event.message}", highlight=False)
        elif event.kind == "note":
            err.print(f"[yellow]note:[/yellow] {escape(event.message)}", highlight=False)
        elif event.kind == "start":
            bar.update(bar_task, description=escape(event.task.id))
        elif event.kind == "progress":
            bar.update(bar_task, description=escape(f"{event.task.id}: {event.message}"[:60]))
        elif event.kind == "done":
            bar.update(bar_task, completed=event.finished)
            verdict = sweeps.run_outcome(event.result.verdicts) if event.result.finished else "not finished (run again when resumed)"
            line = f"{event.finished}/{event.total} {event.task.id}: {verdict} ({event.result.status}, {event.result.seconds:.1f} s)"
            err.print(f"[dim]· {escape(line)}[/dim]", highlight=False)

    try:
        with bar:
            result = sweeps.run(spec, target, parallel=parallel, on_event=show)
    except KeyboardInterrupt:
        err.print(f"interrupted: run the same command again (-o {escape(str(target))}) to resume; finished runs are kept")
        raise typer.Exit(130)
    sys.stdout.write(sweeps.render(target, "term", color=out.is_terminal and not out.no_color, width=out.width if out.is_terminal else None))
    err.print(f"sweep directory: {escape(str(result.dir))}", highlight=False)


@app.command()
def down(lab: Optional[str] = typer.Argument(None, help="The lab to remove (name or path)."),
         all_labs: bool = typer.Option(False, "--all", help="Remove every labctl object on this engine (every lab, every instance)."),
         instance: Optional[str] = typer.Option(None, "--instance", help="Only this instance of the lab (default: the lab itself, instance 'default')."),
         all_instances: bool = typer.Option(False, "--all-instances", help="Every instance of the lab."),
         param: List[str] = PARAM_OPT, no_wait: bool = NO_WAIT_OPT) -> None:
    """Remove a lab instance's containers and networks, and nothing else: other instances stay up.

    Example: labctl down teardown (or: labctl down teardown --instance b)
    """
    if (lab is None) == (not all_labs):
        raise UserError("give a lab, or --all (not both)")
    if instance is not None and all_instances:
        raise UserError("give --instance or --all-instances, not both")
    if all_labs and (instance is not None or all_instances):
        raise UserError("--all takes every instance already: leave out --instance and --all-instances")
    with progress_shown() as progress:
        removed = api.down(None if all_labs else lab, params=api.parse_params(param), wait=not no_wait, progress=progress,
                           instance=api.ALL_INSTANCES if all_instances else instance)
    # Names for a small lab; for a big one, the first few and how many more.
    shown = ", ".join(removed[:STATUS_TABLE_NODES]) + (f" and {len(removed) - STATUS_TABLE_NODES} more" if len(removed) > STATUS_TABLE_NODES else "")
    out.print(f"removed {len(removed)} object(s)" + (": " + shown if removed else ""), highlight=False, soft_wrap=True)
    if lab is not None and not all_instances:
        others = [i for i in api.instances(lab, params=api.parse_params(param))]
        if others:
            err.print(f"still up: instance(s) {', '.join(others)} of {escape(api.lab_name(lab, api.parse_params(param)))} "
                      "(--instance NAME or --all-instances takes them)", highlight=False)


@app.command()
def status(lab: Optional[str] = typer.Argument(None, help="A lab; all labs that are up when omitted."),
           instance: Optional[str] = typer.Option(None, "--instance", help="Only this instance of the lab (default: every instance that is up)."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show each lab instance that is up: nodes, their state, addresses per link and routes.

    Example: labctl status teardown --json
    """
    states = api.status(lab, instance=instance)
    if as_json:
        out.print_json(data=[s.to_json() for s in states])
        return
    if not states:
        out.print("no labs are up")
    for state in states:
        _print_status([state])


STATUS_TABLE_NODES = 20  # up prints the full status of labs up to this size, a summary above it


def _print_status(states: list) -> None:
    for state in states:
        title, flag = escape(state.title), escape(instance_flag(state.instance))
        if state.health == "busy":
            out.print(f"lab {title} is busy: {escape(state.busy or 'another labctl')} is working on it", highlight=False)
        elif state.health == "stale":
            out.print(f"[red]lab {title} is stale[/red] (half made): " + escape("; ".join(state.problems)),
                      highlight=False, soft_wrap=True)
            out.print(f"  repair: labctl up LAB_FILE{flag}; remove: labctl down {escape(state.lab)}{flag}", highlight=False, soft_wrap=True)
        links = Table(title=f"lab {title}: links", title_justify="left")
        for column in ("link", "subnet", "bridge gateway", "network", "impairments in force"):
            links.add_column(column)
        for link in state.links:
            links.add_row(link["name"], link["subnet"], link["gateway"], link["network"],
                          escape("\n".join(_impairment_line(d) for d in link.get("impairments", []))))
        out.print(links)
        for loop in state.loops:
            out.print(f"routing loop: {loop['router']} sends {'every packet' if not loop.get('match') else 'matching packets'} "
                      f"to {loop['peer']} on {loop['dev']} until it heals at {_clock(loop['heal_at'])}")
        nodes = Table(title=f"lab {title}: nodes", title_justify="left")
        for column in ("node", "state", "interfaces", "routes"):
            nodes.add_column(column)
        for node in state.nodes:
            interfaces = "\n".join(f"{i['name']} {' '.join(i['addresses'])}" for i in node.interfaces)
            routes = "\n".join(f"{r['to']}" + (f" via {r['via']}" if r.get("via") else "") + f" dev {r['dev']}" for r in node.routes)
            nodes.add_row(node.name, node.status, interfaces, routes)
        out.print(nodes)
        services = [(node.name, s) for node in state.nodes for s in node.services]
        if services:
            table = Table(title=f"lab {title}: services", title_justify="left")
            for column in ("node", "service", "state", "pid", "log"):
                table.add_column(column)
            for name, service in services:
                how = service["state"] + (f" (exit {service['exit']})" if service.get("exit") is not None else "")
                table.add_row(name, escape(service["cmd"]), "[green]running[/green]" if service["state"] == "running" else f"[red]{how}[/red]",
                              str(service["pid"]), escape(service["log"]))
            out.print(table)


def _impairment_line(direction: dict) -> str:
    how = ", ".join(f"{part}: {mechanism}" for part, mechanism in direction["parts"].items())
    return f"from {direction['node']}: {direction['description']} ({direction['mechanism']}: {how})"


def _clock(t: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


@app.command()
def impair(lab: str = LAB_ARG, link: str = typer.Argument(..., help="The link (its name in the lab file)."),
           from_node: Optional[str] = typer.Option(None, "--from", help="Only this endpoint's egress onto the link; every endpoint's when omitted."),
           delay: Optional[str] = typer.Option(None, help="One-way delay, e.g. 50ms."),
           jitter: Optional[str] = typer.Option(None, help="Delay variation (±), e.g. 10ms."),
           distribution: Optional[str] = typer.Option(None, help="Jitter distribution: uniform (default) or normal."),
           loss: Optional[str] = typer.Option(None, help="Random loss, e.g. 5%."),
           loss_correlation: Optional[str] = typer.Option(None, "--loss-correlation", help="Correlation of successive losses, e.g. 25%."),
           duplicate: Optional[str] = typer.Option(None, help="Duplicated packets, e.g. 1%."),
           reorder: Optional[str] = typer.Option(None, help="Packets sent without the delay, overtaking the others, e.g. 25% (needs --delay)."),
           corrupt: Optional[str] = typer.Option(None, help="Packets with one bit flipped, e.g. 0.1%."),
           rate: Optional[str] = typer.Option(None, help="Bandwidth, e.g. 1mbit."),
           limit: Optional[int] = typer.Option(None, help="Queue length in packets (for delay or rate)."),
           clear: bool = typer.Option(False, "--clear", help="Remove the impairment (in that direction, or every one)."),
           param: List[str] = PARAM_OPT,
           as_json: bool = typer.Option(False, "--json", help="Print JSON."),
           no_wait: bool = NO_WAIT_OPT, instance: Optional[str] = INSTANCE_OPT) -> None:
    """Impair a link of a running lab now; the settings given replace what was in force in those directions.

    Example: labctl impair teardown right --from router --delay 50ms --loss 5%
    """
    settings = {"delay": delay, "jitter": jitter, "distribution": distribution, "loss": loss, "loss_correlation": loss_correlation,
                "duplicate": duplicate, "reorder": reorder, "corrupt": corrupt, "rate": rate, "limit": limit}
    with progress_shown(not as_json) as progress:
        directions = api.impair(lab, link, from_node, settings, clear, params=api.parse_params(param), wait=not no_wait,
                                progress=progress, instance=instance)
    if as_json:
        out.print_json(data=[d.to_json() for d in directions])
        return
    for direction in directions:
        out.print(escape(direction.summary), highlight=False)


@app.command()
def loop(lab: str = LAB_ARG, r1: str = typer.Argument(..., help="A router.", autocompletion=_complete_node),
         r2: str = typer.Argument(..., help="Another router on a link with r1.", autocompletion=_complete_node),
         for_: Optional[str] = typer.Option(None, "--for", help="How long the loop lasts, e.g. 2s; it heals by itself."),
         from_: Optional[str] = typer.Option(None, "--from", help="Only packets from this node or address."),
         to: Optional[str] = typer.Option(None, help="Only packets to this node or address."),
         proto: Optional[str] = typer.Option(None, help="Only this protocol: tcp, udp or icmp."),
         sport: Optional[int] = typer.Option(None, help="Only this source port."),
         dport: Optional[int] = typer.Option(None, help="Only this destination port."),
         flags: Optional[str] = typer.Option(None, help="Only TCP segments with these flags set, e.g. P (data) or =S."),
         payload: Optional[str] = typer.Option(None, help="Only packets carrying this text."),
         heal: bool = typer.Option(False, "--heal", help="Heal a loop of these routers now."),
         param: List[str] = PARAM_OPT,
         as_json: bool = typer.Option(False, "--json", help="Print JSON."),
         no_wait: bool = NO_WAIT_OPT, instance: Optional[str] = INSTANCE_OPT) -> None:
    """Make two routers forward (matching) packets to each other for a while: a transient routing loop.

    Example: labctl loop teardown-loop r1 r2 --for 2s --proto tcp --dport 5010
    """
    match = {"from": from_, "to": to, "proto": proto, "sport": sport, "dport": dport, "flags": flags, "payload": payload}
    with progress_shown(not as_json) as progress:
        result = api.loop(lab, r1, r2, for_, match, heal=heal, params=api.parse_params(param), wait=not no_wait, progress=progress,
                          instance=instance)
    if heal:
        healed = [router for router, reply in result.items() if reply.get("healed")]
        out.print(f"healed the loop on {', '.join(healed)}" if healed else "no loop was in force")
        return
    if as_json:
        out.print_json(data=result.to_json())
        return
    out.print(f"{escape(result.summary)}: from {_clock(result.started)} until {_clock(result.heal_at)}", highlight=False)


@app.command(name="exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(lab: str = typer.Argument(..., help="The lab.", autocompletion=_complete_lab),
          node: str = typer.Argument(..., help="The node.", autocompletion=_complete_node),
          command: List[str] = typer.Argument(..., help="The command, after --."),
          instance: Optional[str] = INSTANCE_OPT) -> None:
    """Run a command in a node; its exit status becomes labctl's.

    Example: labctl exec teardown client -- ping -c 1 server
    """
    def stream(chunk: bytes, is_err: bool) -> None:
        target = sys.stderr.buffer if is_err else sys.stdout.buffer
        target.write(chunk)
        target.flush()

    result = api.exec_in(lab, node, command, stream=stream, instance=instance)
    raise typer.Exit(result.exit_code)


@app.command()
def shell(lab: str = typer.Argument(..., help="The lab.", autocompletion=_complete_lab),
          node: str = typer.Argument(..., help="The node.", autocompletion=_complete_node),
          command: str = typer.Option("bash", help="The shell to start."),
          instance: Optional[str] = INSTANCE_OPT) -> None:
    """Open an interactive shell in a node.

    Example: labctl shell teardown router
    """
    raise typer.Exit(api.shell(lab, node, [command], instance=instance))


class _ReaderGone(Exception):
    """The process reading a capture from our stdout has quit."""


@app.command()
def capture(lab: str = typer.Argument(..., help="The lab.", autocompletion=_complete_lab),
            target: str = typer.Argument(..., metavar="NODE[:IFACE]", help="A node, and one of its interfaces (default: its only one, else any).",
                                  autocompletion=_complete_node_interface),
            write: Optional[str] = typer.Option(None, "--write", "-w", help="Write pcap to this file, or - for stdout (for Wireshark or tshark)."),
            count: Optional[int] = typer.Option(None, "--count", "-c", min=1, help="Stop after this many packets."),
            bpf: Optional[List[str]] = typer.Argument(None, help="A capture filter (tcpdump syntax), e.g. tcp port 5000."),
            instance: Optional[str] = INSTANCE_OPT) -> None:
    """Capture live on a node's interface: text, or pcap as it comes (-w FILE or -w -).

    Example: labctl capture teardown router:right -w - | wireshark -k -i -
    """
    node, _, iface = target.partition(":")
    if write == "-" and sys.stdout.isatty():
        raise UserError("not writing a binary capture to a terminal", hint="pipe it (-w - | wireshark -k -i -), or -w FILE")
    if write is None:
        def sink(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    elif write == "-":
        def sink(data: bytes) -> None:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                raise _ReaderGone from None  # the reader quit (wireshark closed): stop the capture in the node
    else:
        handle = open(write, "wb")

        def sink(data: bytes) -> None:
            handle.write(data)
            handle.flush()

    def on_stderr(data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()

    try:
        code = api.capture(lab, node, iface or None, sink=sink, pcap=write is not None, count=count, bpf=bpf or [], on_stderr=on_stderr,
                           instance=instance)
    except _ReaderGone:
        code = 0
    finally:
        if write not in (None, "-"):
            handle.close()
    raise typer.Exit(code)


@app.command()
def labs(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in labs (and those on $LABCTL_LABS_PATH).

    Example: labctl labs --json
    """
    found = api.labs()
    if as_json:
        out.print_json(data=[vars(l) for l in found])
        return
    table = Table()
    table.add_column("lab")
    table.add_column("description")
    for info in found:
        table.add_row(info.name, info.description)
    out.print(table)


@app.command()
def schema(kind: str = typer.Argument("lab", help="lab or scenario.")) -> None:
    """Print the JSON Schema of lab or scenario files, for editors (yaml-language-server and friends).

    Example: labctl schema scenario > scenario.schema.json
    """
    sys.stdout.write(json.dumps(api.schema(kind), indent=2) + "\n")


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check the engine, the image, and the kernel features labctl relies on (probed inside a node).

    Example: labctl doctor --json
    """
    checks = api.doctor()
    if as_json:
        out.print_json(data=[vars(c) for c in checks])
    else:
        table = Table()
        for column in ("check", "", "detail", "labctl uses instead"):
            table.add_column(column)
        for check in checks:
            table.add_row(check.name, "[green]ok[/green]" if check.ok else "[yellow]no[/yellow]", check.detail, check.instead)
        out.print(table)
    if not checks[0].ok:
        raise typer.Exit(2)


@image_app.command("build")
def image_build(lab: Optional[str] = typer.Argument(None, help="A lab: also build the image variants its `packages:` need."),
                param: List[str] = PARAM_OPT,
                offline: bool = typer.Option(False, help="Use the offline Debian bootstrap, never a registry."),
                rebuild: bool = typer.Option(False, help="Build even if an image for this code exists.")) -> None:
    """Build the node image (reused when the agent, Dockerfile and package list are unchanged), and a lab's image variants.

    Example: labctl image build --offline (or: labctl image build labs/teardown-course)
    """
    with progress_shown() as progress:
        result = api.build_image(lab, api.parse_params(param), offline=offline, rebuild=rebuild, progress=progress)
    info = result.node_image if lab else result
    state = "built" if info.built else "up to date"
    out.print(f"{info.tag}: {state} (base {info.base}, {info.base_kind})")
    if lab:
        for node, tag in result.variants.items():
            out.print(f"  node {node}: {tag}", highlight=False)


@image_app.command("list")
def image_list(as_json: bool = typer.Option(False, "--json", help="Print the images as JSON.")) -> None:
    """The images labctl made: node images, offline bases, lab variants (with their packages), and who runs them.

    Example: labctl image list
    """
    entries = api.images()
    if as_json:
        out.print_json(data=[dataclasses.asdict(e) for e in entries])
        return
    if not entries:
        out.print("no labctl images (the first `labctl up` or `labctl image build` makes the node image)")
        return
    table = RichTable(box=None)
    for column in ("image", "kind", "size", "created", "packages", "used by"):
        table.add_column(column)
    for e in entries:
        kind = e.kind + (" (current)" if e.current else "")
        users = ", ".join(e.used_by[:4]) + (f" and {len(e.used_by) - 4} more" if len(e.used_by) > 4 else "")
        table.add_row(e.tag, kind, f"{e.size / 1e6:.0f} MB", e.created.replace("T", " "), " ".join(e.packages) or "-", users or "-")
    out.print(table)


@image_app.command("prune")
def image_prune(tags: List[str] = typer.Argument(None, help="Only these images (default: every unused one)."),
                everything: bool = typer.Option(False, "--all", help="Also the current node image and its base (rebuilt on the next up)."),
                as_json: bool = typer.Option(False, "--json", help="Print the removed tags as JSON.")) -> None:
    """Remove labctl's images no container runs: node images of older labctl code, unused lab variants.

    Example: labctl image prune (or: labctl image prune --all, after labctl down --all)
    """
    removed = api.prune_images(tags or (), everything=everything)
    if as_json:
        out.print_json(data={"removed": removed})
        return
    for tag in removed:
        out.print(f"removed {tag}", highlight=False)
    out.print(f"{len(removed)} image(s) removed" + ("" if everything else "; the current node image and its base stay (--all removes them)"))


@export_app.command("compose")
def export_compose(lab: str = LAB_ARG, param: List[str] = PARAM_OPT,
                   output: Optional[str] = typer.Option(None, "--output", "-o", help="Directory to write compose.yaml and .env into (default ./LAB-compose)."),
                   templates: Optional[str] = typer.Option(None, "--templates", help="Your own template directory (compose.yaml.j2 and any other *.j2)."),
                   build: bool = typer.Option(True, help="Build the node image now if it is missing."),
                   as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
                   instance: Optional[str] = INSTANCE_OPT) -> None:
    """Write a lab as a Compose project that brings up the same lab as `labctl up`.

    Example: labctl export compose teardown -o td && cd td && docker-compose up -d && labctl run teardown
    """
    from pathlib import Path

    with progress_shown(not as_json) as progress:
        result = api.export_compose(lab, api.parse_params(param), output=Path(output) if output else None,
                                    templates=Path(templates) if templates else None, build=build, progress=progress,
                                    instance=instance)
    if as_json:
        out.print_json(data={"directory": str(result.directory), "files": [str(f) for f in result.files], "image": result.image,
                             "image_state": result.image_state, "templates": str(result.templates)})
        return
    out.print(f"wrote {escape(str(result.directory / 'compose.yaml'))} (image {result.image}, {result.image_state})", highlight=False)
    if result.image_state == "missing":
        err.print(f"[yellow]note:[/yellow] the image {result.image} is not on this engine: build it with `labctl image build` "
                  "on the machine that runs docker-compose", highlight=False)
    out.print(f"next: cd {escape(str(result.directory))} && docker-compose up -d", highlight=False)


@export_app.command("pcapng")
def export_pcapng(run: str = typer.Argument(..., help="A run directory, or a lab (its latest run)."),
                  output: Optional[str] = typer.Option(None, "--output", "-o", help="The pcapng file, or - for stdout (default ./RUN-ID.pcapng)."),
                  results: Optional[str] = typer.Option(None, help="Where run directories are (default ./results or $LABCTL_RESULTS).")) -> None:
    """Merge a run's captures into one pcapng that Wireshark opens with an interface per NODE:IFACE.

    Example: labctl export pcapng teardown -o run.pcapng && wireshark run.pcapng
    """
    from pathlib import Path

    root = Path(results) if results else None
    if output == "-":
        if sys.stdout.isatty():
            raise UserError("not writing a binary capture to a terminal", hint="pipe it (-o - | tshark -r -), or -o FILE")
        summary = api.export_pcapng(run, sys.stdout.buffer, root=root)
        sys.stdout.buffer.flush()
    else:
        import tempfile

        # Written beside the target, then renamed: a reader never sees half a file.
        with tempfile.NamedTemporaryFile("wb", dir=Path(output).parent if output else Path.cwd(), suffix=".part", delete=False) as part:
            try:
                summary = api.export_pcapng(run, part, root=root)
            except BaseException:
                Path(part.name).unlink(missing_ok=True)
                raise
        target = Path(output) if output else Path(f"{Path(summary['run_dir']).name}.pcapng")
        Path(part.name).replace(target)
        err.print(f"wrote {escape(str(target))}: {summary['packets']} packet(s) from {', '.join(summary['interfaces'])}", highlight=False)
    for problem in summary.get("damage", []):
        err.print(f"note: {escape(problem)}", highlight=False, soft_wrap=True)


@app.command()
def validate(lab: str = LAB_ARG, param: List[str] = PARAM_OPT,
             scenario: List[str] = typer.Option([], "--scenario", "-s", help="Only this scenario (repeatable); all when omitted.",
                                           autocompletion=_complete_scenario),
             as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Check a lab file and every scenario of it (each matrix point), without Docker: exit 0 when valid, 2 otherwise.

    Example: labctl validate labs/teardown
    """
    result = api.validate(lab, scenario, api.parse_params(param))
    if as_json:
        out.print_json(data=result)
        return
    runs = sum(s["runs"] for s in result["scenarios"])
    out.print(f"{escape(result['path'])}: lab [bold]{result['lab']}[/bold] is valid ({result['nodes']} nodes, {result['links']} links); "
              f"{len(result['scenarios'])} scenario file(s), {runs} run(s), all valid", highlight=False, soft_wrap=True)


@app.command()
def new(directory: str = typer.Argument(..., help="The new lab's directory (new, or empty)."),
        name: Optional[str] = typer.Option(None, help="The lab's name (default: from the directory).")) -> None:
    """Scaffold a lab: lab.yaml, one scenario, its guide (README.md) and a .gitignore for results.

    Example: labctl new mylab && labctl validate mylab
    """
    for path in api.new_lab(directory, name):
        out.print(f"wrote {escape(str(path))}", highlight=False)
    out.print(f"next: labctl validate {escape(directory)} && labctl run {escape(directory)}", highlight=False)


@app.command()
def grade(lab: str = LAB_ARG,
          submissions: str = typer.Option(..., "--submissions", help="A directory with one subdirectory per submission."),
          scenario: List[str] = typer.Option([], "--scenario", "-s", help="A scenario to grade (repeatable); all when omitted."),
          parallel: int = typer.Option(1, "--parallel", "-j", min=1, help="Submissions graded at once, each on a lab instance of its own (grade1 ... gradeN)."),
          output: Optional[str] = typer.Option(None, "--output", "-o", help="The gradebook directory (default ./LAB-grades)."),
          timeout: Optional[float] = typer.Option(None, help="Seconds one run may take (default 300)."),
          param: List[str] = PARAM_OPT,
          as_json: bool = typer.Option(False, "--json", help="Print the gradebook as JSON.")) -> None:
    """Run every scenario for every submission; write one gradebook (CSV, JSON), a class summary and a report per submission.

    Each submission reaches the lab as the parameter `submission` (its absolute path), on a fresh lab instance of the
    grader's own (the lab itself, if it is up, is left alone). Exit status 0 when grading completed, whatever the grades;
    2 on a usage or environment error.

    Example: labctl grade labs/teardown-course --submissions tests/submissions -o grades
    """
    with progress_shown(not as_json) as progress:
        book = api.grade(lab, submissions, scenarios=scenario, parallel=parallel, output=output, params=api.parse_params(param),
                         timeout=timeout, progress=progress)
    if as_json:
        out.print_json(data=book.to_json())
        return
    table = Table(title=f"{book.lab}: {len(book.grades)} submission(s) in {book.seconds:.1f} s", title_justify="left")
    table.add_column("submission")
    names = [column.name for column in book.columns]
    for column in book.columns:
        # A name two columns share (an expectation of each matrix point) is told apart by its scenario label.
        table.add_column(escape(column.name if names.count(column.name) == 1 else column.key))
    table.add_column("points")
    table.add_column("reason")
    colours = {"pass": "green", "fail": "red", "undecided": "yellow"}
    for g in book.grades:
        cells = [f"[{colours.get(g.outcomes[c.key], 'dim')}]{g.outcomes[c.key]}[/]" for c in book.columns]
        table.add_row(escape(g.submission), *cells, f"{g.points:g}/{g.max_points:g}", escape((g.reason or "")[:200]))
    out.print(table)
    if book.note:
        err.print(f"[yellow]note:[/yellow] {escape(book.note)}", highlight=False)
    for name in ("gradebook.csv", "gradebook.json", "summary.html"):
        out.print(f"wrote {escape(str(book.directory / name))}", highlight=False)


# Commands that talk to the engine, and those that plan subnets: their environment is checked first.
ENGINE_COMMANDS = {"up", "run", "down", "status", "impair", "loop", "exec", "shell", "doctor", "image", "export", "capture", "grade"}
POOL_COMMANDS = {"up", "run", "impair", "loop", "export", "grade"}


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context, version: bool = typer.Option(False, "--version", help="Print the version.")) -> None:
    if version:
        out.print(f"labctl {__version__}")
        raise typer.Exit()
    command = ctx.invoked_subcommand
    if command in ENGINE_COMMANDS:
        environment.check_docker_host()
    if command in POOL_COMMANDS:
        environment.check_subnet_pool()


def _usage_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error and abort classes, wherever this Typer keeps them: Typer 0.29 carries
    its own copy (typer._click) and no longer installs click; older ones use click itself."""
    usage: list[type] = []
    aborts: list[type] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage += [c for c in (getattr(module, "ClickException", None),) if isinstance(c, type)]
        aborts += [c for c in (getattr(module, "Abort", None),) if isinstance(c, type)]
    return tuple(usage), tuple(aborts)


def _fail(message: str, hint: str | None = None, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {escape(message)}" + (f"\n  hint: {escape(hint)}" if hint else ""), highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    usage, aborts = _usage_errors()
    try:
        # Without standalone mode click returns the exit status instead of exiting.
        code = app(prog_name="labctl", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except BrokenPipeError:
        # The reader went away (`labctl schema | head`): nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        if exc.errno in environment.USER_ERRNOS:
            _fail(environment.describe_os_error(exc))
        raise
    except aborts:
        err.print("interrupted")
        sys.exit(130)
    except usage as exc:  # a mistyped command or option
        context = getattr(exc, "ctx", None)
        path = context.command_path if context is not None else "labctl"
        if not exc.format_message().strip():
            sys.exit(2)  # a group given no command: its help was shown, that is the message
        _fail(exc.format_message(), hint=f"{path} --help lists what it takes")


if __name__ == "__main__":
    main()
