"""Command line of the in-node agent: ``python3 -m labctl.agent COMMAND``."""

from __future__ import annotations

import json
import sys

from . import actor, hostfw, netsetup, probe, shaper, sysctl


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python3 -m labctl.agent {setup|hosts|inspect|probe|actor|sysctl|host-bridge-accept} [JSON on stdin]\n"
              "       python3 -m labctl.agent shaper --queue N (--config JSON | --config-file PATH) [--stats-file PATH] [--seed S]")
        return 0 if argv else 2
    command = argv[0]
    if command == "setup":
        config = json.loads(argv[1]) if len(argv) > 1 else json.load(sys.stdin)
        result = netsetup.apply(config)
    elif command == "hosts":
        result = netsetup.write_hosts(json.loads(argv[1]) if len(argv) > 1 else json.load(sys.stdin))
    elif command == "inspect":
        result = netsetup.inspect()
    elif command == "sysctl":
        result = sysctl.apply(json.loads(argv[1]))
    elif command == "actor":
        return actor.main(argv[1:])
    elif command == "host-bridge-accept":
        result = hostfw.ensure()
    elif command == "probe":
        result = probe.run_all()
    elif command == "shaper":
        # A daemon: runs until SIGTERM, then prints its final stats like any other command's result.
        result = shaper.main(argv[1:])
    else:
        print(f"unknown agent command: {command}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
