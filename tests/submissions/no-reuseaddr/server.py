"""A submission that forgets SO_REUSEADDR: its restart fails while TIME_WAIT holds the port."""

import socket
import struct
import sys

port = int(sys.argv[1])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
