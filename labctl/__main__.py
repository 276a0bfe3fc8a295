"""python -m labctl, and the `labctl` command: the CLI, with Ctrl-C clean from the first moment.

Importing the CLI takes a while (Typer, rich, the Docker client); a Ctrl-C then is the
user's, not a bug, so it ends with status 130 and no traceback, as it does later on.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    # Nothing exists yet that needs cleaning up, so leave at once: a KeyboardInterrupt raised
    # inside an extension module's import (pydantic-core compiling a pattern) is printed as
    # "Exception ignored" with a traceback instead of reaching the handler below.
    os.write(2, b"interrupted\n")
    os._exit(130)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
    cli_main()


if __name__ == "__main__":
    main()
