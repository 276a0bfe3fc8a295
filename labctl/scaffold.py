"""`labctl new DIR`: a lab to start from, that `labctl validate DIR` accepts as it is."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import UserError

LAB = """\
name: {name}
description: A client and a server separated by one router.
nodes:
  client: {{}}
  router: {{role: router}}
  server: {{}}
    # Programs and files of your own: copied at `up`, refreshed when they change.
    # files:
    #   - {{src: server/, dst: /srv/app}}
    # startup:
    #   - {{cmd: "python3 /srv/app/server.py 8000", service: true}}
# Debian packages for every node (fetched on the host, installed offline):
# packages: [iperf3]
links:
  - {{name: left, endpoints: [client, router]}}
  - {{name: right, endpoints: [router, server]}}
"""

SCENARIO = """\
name: handshake
description: "The client connects to the server through the router, sends a line, and closes first: the client holds TIME_WAIT."
params: {port: 5000}
steps:
  - {node: server, listen: {port: "{{ port }}"}, as: lsn}
  - {node: client, connect: {to: server, port: "{{ port }}"}, as: c}
  - {node: server, accept: lsn, as: s}
  - {node: client, send: {sock: c, data: "hello"}}
  - {node: server, recv: {sock: s, expect: "hello"}, as: got}
  - {node: client, close: c}
  - {node: server, recv: {sock: s}}
  - {node: server, close: s}
  - {wait: {node: client, state: TIME_WAIT, remote_port: "{{ port }}", timeout: 5s}}
expect:
  - {name: the data arrives, points: 1, data: {step: got, equals: "hello"}}
  - {name: the client holds TIME_WAIT, points: 1, states: {node: client, remote_port: "{{ port }}", sequence: [ESTABLISHED, FIN_WAIT1, TIME_WAIT]}}
  - {name: one FIN each way, points: 1, segments: {from: client, to: server, flags: F, count: 1}}
"""

GUIDE = """\
# {name}

A client and a server separated by one router. Run it:

    labctl validate {directory}     # the lab and its scenarios, no Docker needed
    labctl run {directory}          # bring it up, run every scenario, print the verdicts
    labctl report {name}            # the latest run: verdicts, ladder diagram, TCP states
    labctl down {name}

## Scenarios

- `handshake`: the client connects, sends a line and closes first; it must hold TIME_WAIT.

Add scenarios in `scenarios/`, one YAML file each; `labctl schema scenario` gives editors their schema.
"""

GITIGNORE = """\
# Run directories and gradebooks: results, not sources.
results/
*-grades/
"""


def new_lab(directory: str | Path, name: str | None = None) -> list[Path]:
    """Write a lab into ``directory`` (new, or empty); return the files written."""
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} exists and is not an empty directory", hint="give a new directory")
    name = name or re.sub(r"[^a-z0-9-]+", "-", target.resolve().name.lower()).strip("-")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name or ""):
        raise UserError(f"'{target.name}' does not make a lab name (lowercase letters, digits, '-', starting with a letter)",
                        hint="give one with --name")
    files = {"lab.yaml": LAB.format(name=name), "scenarios/handshake.yaml": SCENARIO,
             "README.md": GUIDE.format(name=name, directory=directory), ".gitignore": GITIGNORE}
    written = []
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
