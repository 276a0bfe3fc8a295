"""Starter: an echo server. Make it survive an immediate restart, and abort with an RST when asked (see README.md)."""

import socket
import struct
import sys

port = int(sys.argv[1])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# TODO: restarting while TIME_WAIT holds this port makes bind() fail. What must be set first?
listener.bind(("", port))
listener.listen(8)
while True:
    conn, _ = listener.accept()
    line = conn.makefile("rb").readline().strip()
    if line == b"abort":
        pass  # TODO: close with an RST (no FIN, no TIME_WAIT): which socket option does that?
    else:
        conn.sendall(line + b"\n")
    conn.close()
