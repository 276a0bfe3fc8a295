"""A submission that crashes before it listens."""

import socket
import sys

port = int(sys.argv[1])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("", str(port)))  # a port as text: TypeError
listener.listen(8)
