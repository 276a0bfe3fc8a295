"""Command line of the in-node agent: ``python3 -m labctl.agent COMMAND``."""

from __future__ import annotations

import json
import sys

from . import hostfw, netsetup, probe


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python3 -m labctl.agent {setup|hosts|inspect|probe|host-bridge-accept} [JSON on stdin]")
        return 0 if argv else 2
    command = argv[0]
    if command == "setup":
        config = json.loads(argv[1]) if len(argv) > 1 else json.load(sys.stdin)
        result = netsetup.apply(config)
    elif command == "hosts":
        result = netsetup.write_hosts(json.loads(argv[1]) if len(argv) > 1 else json.load(sys.stdin))
    elif command == "inspect":
        result = netsetup.inspect()
    elif command == "host-bridge-accept":
        result = hostfw.ensure()
    elif command == "probe":
        result = probe.run_all()
    else:
        print(f"unknown agent command: {command}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
