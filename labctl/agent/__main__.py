"""Command line of the in-node agent: ``python3 -m labctl.agent [--protocol N] COMMAND [JSON]``.

The host starts it with ``protocol.command_line``, which names the protocol
version it speaks: an agent of another version refuses (exit
``EXIT_MISMATCH``) before doing anything. Each command imports only its own
module: the agent runs once per node on every `up`, so its start-up time is
part of every lab's start-up time.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Callable

from . import protocol

USAGE = (f"usage: python3 -m labctl.agent [{protocol.VERSION_FLAG} N] {{{'|'.join([*protocol.COMMANDS, 'actor'])}}} [JSON]\n"
         "       python3 -m labctl.agent shaper --queue N (--config JSON | --config-file PATH) [--stats-file PATH] [--seed S]")

# command -> (module, function): each takes the command's typed request (if it has one) and returns its reply.
HANDLERS = {
    "setup": ("netsetup", "apply"),
    "hosts": ("netsetup", "write_hosts"),
    "inspect": ("netsetup", "inspect"),
    "health": ("netsetup", "health"),
    "sysctl": ("sysctl", "apply"),
    "probe": ("probe", "run_all"),
    # Link impairments on this node's egress (netem, or iptables + tbf + the shaper).
    "impair": ("impair", "apply"),
    # A transient forwarding loop with another router (start, heal, status).
    "loop": ("loop", "main"),
    # The node's own files and programs from the lab file (files:, startup:), and its services.
    "files-prepare": ("startup", "prepare"),
    "files-seal": ("startup", "seal"),
    "startup": ("startup", "run"),
    "provision-state": ("startup", "state"),
    "services": ("startup", "services"),
}
assert set(HANDLERS) == set(protocol.COMMANDS)


def answer(command: str, argv: list[str], handler: Callable) -> protocol.Reply:
    """A one-shot command's request decoded from its argument, handled, its failure a reply."""
    request_type, _ = protocol.COMMANDS[command]
    try:
        if request_type is None:
            return handler()
        payload = json.loads(argv[0]) if argv else json.load(sys.stdin)
        return handler(request_type.from_json(payload))
    except (RuntimeError, ValueError, OSError) as exc:  # ProtocolError and JSON errors are ValueErrors
        return protocol.Reply(ok=False, error=str(exc))


def handler_of(command: str) -> Callable:
    module, function = HANDLERS[command]
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def versioned(argv: list[str]) -> list[str] | None:
    """The command line after the protocol version it names; None (said on stderr) if it is not ours."""
    if argv[:1] != [protocol.VERSION_FLAG]:
        return argv  # a person at the node's shell: no version named
    if argv[1:2] != [str(protocol.PROTOCOL_VERSION)]:
        print(protocol.mismatch_message(argv[1] if len(argv) > 1 else "?"), file=sys.stderr)
        return None
    return argv[2:]


def main(argv: list[str]) -> int:
    argv = versioned(argv)
    if argv is None:
        return protocol.EXIT_MISMATCH
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "actor":
        from . import actor

        return actor.main(rest)
    if command == "shaper":
        # A daemon: runs until SIGTERM, then prints its final stats like any other command's result.
        from . import shaper

        result = shaper.main(rest)
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return 0 if result.get("ok", True) else 1
    if command not in protocol.COMMANDS:
        print(f"unknown agent command: {command}\n{USAGE}", file=sys.stderr)
        return 2
    reply = answer(command, rest, handler_of(command))
    json.dump(reply.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0 if reply.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
