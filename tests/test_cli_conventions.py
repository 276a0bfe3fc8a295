"""CLI conventions every command keeps: help with an example, --json where people script,
plain output when piped or with NO_COLOR, completion of labs, scenarios and nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python3 -m labctl`` from this checkout, its output piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "labctl", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def in_terminal(*argv: str, env: dict | None = None, timeout: float = 60) -> bytes:
    """What ``labctl ARGV`` writes to a terminal (a pseudo-terminal: stdout and stderr)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: exec labctl on the terminal
        os.chdir(ROOT)
        os.execvpe(sys.executable, [sys.executable, "-m", "labctl", *argv], {**os.environ, "TERM": "xterm-256color", **(env or {})})
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    return b"".join(chunks)


def commands(group=None, path=("labctl",)):
    """Every command of the CLI with its path, groups' subcommands included."""
    import typer

    from labctl.cli import app

    group = group or typer.main.get_command(app)
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_command_shows_an_example_in_its_help():
    found = dict(commands())
    assert {("labctl", "run"), ("labctl", "export", "compose"), ("labctl", "image", "build"), ("labctl", "capture")} <= set(found)
    missing = [" ".join(path) for path, command in found.items() if f"Example: {' '.join(path)}" not in (command.help or "")]
    assert missing == []


def test_help_prints_the_example():
    result = run_cli("run", "--help")
    assert result.returncode == 0
    assert "Example: labctl run teardown" in result.stdout


def test_piped_tables_are_never_cut():
    from labctl import api

    result = run_cli("labs")
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    lines = result.stdout.splitlines()
    for lab in api.labs():
        # each lab whole on one line: a plain layout that grep and awk can read
        assert any(line.split()[0] == lab.name and lab.description in line for line in lines if line.strip()), (lab.name, lines)
    assert not any(ch in result.stdout for ch in "┏━│└")


def test_no_color_is_respected_on_a_terminal():
    colour = b"\x1b[31m"  # red: errors are red on a terminal
    assert colour in in_terminal("validate", "/nonexistent/lab")
    assert b"\x1b[3" not in in_terminal("validate", "/nonexistent/lab", env={"NO_COLOR": "1"})


def test_piped_output_has_no_escape_sequences():
    result = run_cli("validate", "/nonexistent/lab")
    assert result.returncode == 2
    assert "\x1b[" not in result.stderr and "error:" in result.stderr


def complete(line: str) -> list[str]:
    """What bash completion offers for ``line`` (the word being typed is the last one, maybe empty)."""
    words = line.split(" ")
    result = subprocess.run([sys.executable, "-m", "labctl"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={**os.environ, "_LABCTL_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)})
    return result.stdout.split()


def test_completion_offers_lab_names():
    assert {"teardown", "teardown-loop"} <= set(complete("labctl run te"))
    assert set(complete("labctl up teardown-l")) == {"teardown-loop"}


def test_completion_offers_the_labs_scenarios_even_after_other_options():
    assert set(complete("labctl run teardown -s l")) == {"linger-abort", "linger-timeout", "lost-final-ack"}
    assert "normal-close" in complete("labctl run -p x=1 teardown --scenario ")
    assert complete("labctl validate teardown -s normal") == ["normal-close"]


def test_completion_offers_nodes_and_interfaces():
    assert set(complete("labctl exec teardown ")) == {"client", "router", "server"}
    assert set(complete("labctl loop teardown-loop r")) == {"r1", "r2"}
    assert set(complete("labctl capture teardown router:")) == {"router:left", "router:right", "router:any"}


def test_completion_is_installed_by_typer():
    assert "--install-completion" in run_cli("--help").stdout
    # Typer finds the shell from the process tree (shellingham): ask from bash.
    shown = subprocess.run(["bash", "-c", f"{sys.executable} -m labctl --show-completion; true"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert "_LABCTL_COMPLETE=complete_bash" in shown.stdout and "labctl" in shown.stdout, shown.stderr


def test_json_where_people_script():
    import json

    for argv in (("labs", "--json"), ("validate", "teardown", "--json")):
        result = run_cli(*argv)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)
    for command in ("run", "status", "labs", "doctor", "validate"):
        assert "--json" in run_cli(command, "--help").stdout, command


@pytest.mark.engine
def test_status_and_doctor_on_a_running_lab(engine, node_image, make_lab):
    import json

    from labctl import api
    from tests.conftest import THREE_NODES

    directory = make_lab(THREE_NODES)
    name = directory.name
    api.up(directory, engine=engine)
    status = run_cli("status", name, "--json")
    assert status.returncode == 0, status.stderr
    [lab] = json.loads(status.stdout)
    assert sorted(n["name"] for n in lab["nodes"]) == ["client", "router", "server"]
    # Piped, the table shows every network name whole (it used to end in '…' at 80 columns).
    table = run_cli("status", name)
    assert table.returncode == 0, table.stderr
    for link in lab["links"]:
        assert link["network"] in table.stdout
    doctor = run_cli("doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    assert json.loads(doctor.stdout)[0]["name"] == "engine"


def test_progress_lines_are_plain_text_not_markup(monkeypatch):
    """A matrix point reads "fin-to-closed[method=kill]": rich must not take the brackets for a tag."""
    import io

    from rich.console import Console

    from labctl import cli

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=buffer, force_terminal=False, width=200))
    with cli.progress_shown() as progress:
        progress("running fin-to-closed[method=kill]")
        progress("[bold]not bold[/bold]")
    assert "running fin-to-closed[method=kill]" in buffer.getvalue()
    assert "[bold]not bold[/bold]" in buffer.getvalue()


def test_a_verdict_table_names_the_matrix_point(monkeypatch):
    """The table's title is "old-duplicate[timestamps=0]: passed ... PATH": brackets are text, not markup
    (they had taken the matrix point, and once the path after it, out of the title)."""
    import io
    from pathlib import Path
    from types import SimpleNamespace

    from rich.console import Console

    from labctl import cli

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buffer, force_terminal=False, width=300))
    outcome = SimpleNamespace(scenario="old-duplicate[timestamps=0]", status="complete", verdicts=[],
                              path=Path("results/teardown/20261201-old-duplicate-timestamps=0-f8e3"))
    cli._print_verdicts(outcome, 0)
    shown = "".join(buffer.getvalue().split())  # an empty table is narrow: its title wraps
    assert "old-duplicate[timestamps=0]:passed(complete)results/teardown/20261201-old-duplicate-timestamps=0-f8e3" in shown
