"""The lab's reach: a NAT guest reaches only the host ports it was given, and what a
test starts in the lab namespace does not outlive the lab."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from pytest_netlab import NAT_HOST, ConfigError


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"port {self.server.server_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_servers() -> Iterator[tuple[int, int]]:
    """Two web servers on the host's 127.0.0.1: one given to the guest, one not."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers[0].server_address[1], servers[1].server_address[1]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_nat_guest_reaches_only_the_host_ports_it_was_given(netlab, loopback_servers):
    given, secret = loopback_servers
    vm = netlab.vm("h1", nics=[netlab.nat(host_ports=[given])])
    netlab.start()
    vm.ssh("udhcpc -i eth0 -n -q -t 10 -T 1")

    assert vm.ssh(f"wget -q -O - http://{NAT_HOST}:{given}/").stdout == f"port {given}\n"
    assert vm.ssh(f"wget -q -O - http://{NAT_HOST}:{given}/").stdout == f"port {given}\n"
    # the gateway is not the host's loopback any more, and only the given port is relayed
    for url in (f"10.0.2.2:{secret}", f"10.0.2.2:{given}", f"{NAT_HOST}:{secret}"):
        result = vm.ssh(f"wget -q -O - http://{url}/", check=False)
        assert not result.ok and "port" not in result.stdout, url


def test_nat_options_are_checked(netlab):
    with pytest.raises(ConfigError, match="NAT host port"):
        netlab.nat(host_ports=[0])
    with pytest.raises(ConfigError, match="twice"):
        netlab.nat(host_ports=[80, 80])
    with pytest.raises(ConfigError, match="True or False"):
        netlab.nat(outside="yes")
