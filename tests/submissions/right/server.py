"""A submission that does it right: SO_REUSEADDR before bind(), SO_LINGER 0 when asked to abort."""

import socket
import struct
import sys

port = int(sys.argv[1])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("", port))
listener.listen(8)
while True:
    conn, _ = listener.accept()
    line = conn.makefile("rb").readline().strip()
    if line == b"abort":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        conn.sendall(line + b"\n")
    conn.close()
