"""Document 003, "port forwarding" (`-nic user,hostfwd=tcp::2222-:22,hostfwd=tcp::8080-:80`):
SSH and a web server in the guest, reached from the host. The host ports are chosen by
the kernel on 127.0.0.1 (a fixed 2222 or 8080 collides between parallel runs)."""

from __future__ import annotations

import socket
import urllib.request


def test_ssh_and_http_forwarded_from_the_host(netlab):
    web = netlab.vm("web", forwards=[80])
    netlab.start()
    # SSH itself comes through hostfwd (vm.ssh uses it): the guest's server answers there
    with socket.create_connection(("127.0.0.1", web.host_port(22)), timeout=10) as ssh:
        assert ssh.recv(64).startswith(b"SSH-2.0-")

    web.ssh("mkdir -p /www && echo 'hello from the guest' > /www/index.html && httpd -p 80 -h /www")
    port = web.host_port(80)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.read() == b"hello from the guest\n"

    # a forward added while the guest runs
    web.ssh("mkdir -p /www2 && echo 'second' > /www2/index.html && httpd -p 8000 -h /www2")
    port2 = web.forward_port(8000)
    with urllib.request.urlopen(f"http://127.0.0.1:{port2}/", timeout=10) as response:
        assert response.read() == b"second\n"
