"""Command line of the in-node agent: ``python3 -m labctl.agent COMMAND``.

Each command imports only its own module: the agent runs once per node on
every `up`, so its start-up time is part of every lab's start-up time.
"""

from __future__ import annotations

import importlib
import json
import sys

USAGE = ("usage: python3 -m labctl.agent {setup|hosts|inspect|probe|actor|sysctl|host-bridge-accept|impair|loop} [JSON]\n"
         "       python3 -m labctl.agent shaper --queue N (--config JSON | --config-file PATH) [--stats-file PATH] [--seed S]")


def _json_arg(argv: list[str]) -> object:
    return json.loads(argv[1]) if len(argv) > 1 else json.load(sys.stdin)


# command -> (module, how to call it with the command line)
COMMANDS = {
    "setup": ("netsetup", lambda m, argv: m.apply(_json_arg(argv))),
    "hosts": ("netsetup", lambda m, argv: m.write_hosts(_json_arg(argv))),
    "inspect": ("netsetup", lambda m, argv: m.inspect()),
    "sysctl": ("sysctl", lambda m, argv: m.apply(_json_arg(argv))),
    "host-bridge-accept": ("hostfw", lambda m, argv: m.ensure()),
    "probe": ("probe", lambda m, argv: m.run_all()),
    # Link impairments on this node's egress (netem, or iptables + tbf + the shaper below).
    "impair": ("impair", lambda m, argv: m.apply(_json_arg(argv))),
    # A transient forwarding loop with another router (start, heal, status).
    "loop": ("loop", lambda m, argv: m.main(_json_arg(argv))),
    # A daemon: runs until SIGTERM, then prints its final stats like any other command's result.
    "shaper": ("shaper", lambda m, argv: m.main(argv[1:])),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = argv[0]
    if command == "actor":
        from . import actor

        return actor.main(argv[1:])
    if command not in COMMANDS:
        print(f"unknown agent command: {command}\n{USAGE}", file=sys.stderr)
        return 2
    module, call = COMMANDS[command]
    result = call(importlib.import_module(f"{__package__}.{module}"), argv)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
