"""The lab's reach: a NAT guest reaches only the host ports it was given, and what a
test starts in the lab namespace does not outlive the lab."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_netlab import NAT_HOST, CommandTimeout, ConfigError
from pytest_netlab.constants import NETNS_RUN_DIR
from pytest_netlab.owner import OWNER_ENV, Owner, pids_in_netns


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


def _gone(pid: int, within: float) -> bool:
    """Whether process *pid* ended (or is a zombie) within *within* seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_what_a_command_leaves_in_the_background_is_gone_after_close(netlab):
    pid = int(netlab.run("sleep 1000 > /dev/null 2>&1 & echo $!").stdout)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"{OWNER_ENV}={Owner.me().tag}".encode() in environ  # cleanup knows whose it is

    netlab.close()

    assert _gone(pid, within=5)


def test_a_command_that_times_out_is_killed_with_its_children(netlab):
    with pytest.raises(CommandTimeout):
        netlab.run("sleep 1000 & wait", timeout=0.5)
    # the shell's own process group went: no child holds the lab's namespace any more
    assert pids_in_netns(NETNS_RUN_DIR / netlab.name) == []
