"""``labctl shell``: an exec with a terminal, pumped between the caller's terminal and Docker."""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty as ttymod
from typing import Callable, Sequence


def shell(api, ident: str, argv: Sequence[str]) -> int:
    exec_id = api.exec_create(ident, list(argv), stdin=True, tty=True, environment={"TERM": os.environ.get("TERM", "xterm")})["Id"]
    sock = api.exec_start(exec_id, socket=True, tty=True)
    pump_terminal(getattr(sock, "_sock", sock), lambda h, w: api.exec_resize(exec_id, height=h, width=w))
    code = api.exec_inspect(exec_id).get("ExitCode")
    return code if code is not None else 0


def pump_terminal(sock, resize: Callable[[int, int], None]) -> None:
    """Copy between this terminal (in raw mode) and an exec socket until the command ends."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        size = os.get_terminal_size(fd)
        resize(size.lines, size.columns)
        ttymod.setraw(fd)
        inputs = [sock, fd]
        while True:
            readable, _, _ = select.select(inputs, [], [])
            if sock in readable:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in readable:
                data = os.read(fd, 65536)
                if data:
                    sock.sendall(data)
                else:
                    sock.shutdown(socket.SHUT_WR)
                    inputs.remove(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
