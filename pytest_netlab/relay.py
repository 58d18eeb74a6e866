"""The host end of a NAT NIC's host port (``netlab.nat(host_ports=[...])``).

QEMU runs this file for each connection a guest opens to ``NAT_HOST:PORT``
(``guestfwd=...-cmd:``), with the connection as stdin and stdout; it joins that
connection to ``127.0.0.1:PORT`` on the host and to nothing else. It is run as a
script (``python -I -S relay.py PORT``) and imports only the standard library.
"""

from __future__ import annotations

import selectors
import socket
import sys

CONNECT_TIMEOUT = 10.0  # seconds
CHUNK = 65536


def _pump(guest: socket.socket, host: socket.socket) -> None:
    """Copy bytes both ways until both directions reached their end."""
    selector = selectors.DefaultSelector()
    peers = {guest: host, host: guest}
    for sock in peers:
        selector.register(sock, selectors.EVENT_READ)
    while selector.get_map():
        for key, _ in selector.select():
            source = key.fileobj
            assert isinstance(source, socket.socket)
            data = source.recv(CHUNK)
            if data:
                peers[source].sendall(data)
                continue
            selector.unregister(source)
            try:
                peers[source].shutdown(socket.SHUT_WR)
            except OSError:
                return  # the other side is gone already


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit() or not 0 < int(argv[0]) < 65536:
        print("usage: relay.py PORT (1-65535)", file=sys.stderr)
        return 2
    guest = socket.socket(fileno=0)
    try:
        host = socket.create_connection(("127.0.0.1", int(argv[0])), timeout=CONNECT_TIMEOUT)
    except OSError:
        return 1  # nothing listens: the guest sees its connection closed
    host.settimeout(None)
    with guest, host:
        _pump(guest, host)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
