"""Document 003, "user-mode networking (NAT)" (`-netdev user,id=net0 -device
virtio-net-pci,netdev=net0`): the guest gets its address by DHCP from QEMU and reaches a
web server that the test runs on the host's loopback: the one port the test gives it
(`host_ports=`), at NAT_HOST. (The document pings a public host instead; traffic here
never leaves the machine: the NAT NIC is restricted, so QEMU's DHCP offers no default
route and the guest reaches no other host service.)"""

from __future__ import annotations

import http.server
import threading

import pytest

from pytest_netlab import NAT_HOST


@pytest.fixture
def loopback_web_server():
    """A web server on the host's 127.0.0.1, port chosen by the kernel."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_guest_behind_qemu_nat_reaches_the_host_loopback(netlab, loopback_web_server):
    vm = netlab.vm("h1", nics=[netlab.nat(host_ports=[loopback_web_server])])
    netlab.start()

    vm.ssh("udhcpc -i eth0 -n -q -t 10 -T 1")
    assert "10.0.2.15/24" in vm.ssh("ip -4 addr show dev eth0").stdout
    assert vm.ssh("ip route show default").stdout == ""  # restricted: nowhere to route to

    page = vm.ssh(f"wget -q -O - http://{NAT_HOST}:{loopback_web_server}/").stdout
    assert page == "hello from the host\n"
