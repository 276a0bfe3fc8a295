"""python -m labctl, and the `labctl` command: the CLI, with Ctrl-C clean from the first moment.

Importing the CLI takes a while (Typer, rich, the Docker client); a Ctrl-C then is the
user's, not a bug, so it ends with status 130 and no traceback, as it does later on.
"""

import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
