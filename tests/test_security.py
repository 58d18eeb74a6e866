"""Security: private session keys, pinned host keys, a restricted loopback-only management
network, quoted helper commands, and a host left exactly as it was by a full lab."""

from __future__ import annotations

import glob
import os
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from pytest_netlab import CommandError, SSHError
from pytest_netlab.netns import namespace_exists
from pytest_netlab.ssh import SSHSession, _PinnedHostKey

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def h1(netlab_module):
    vm = netlab_module.vm("h1", nics=[netlab_module.bridge("br1")])
    netlab_module.start()
    return vm


def test_session_key_is_private_and_deleted_at_the_end(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import os, stat

        def test_key(netlab_config):
            path = netlab_config.key.private_path
            print("KEY", path)
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert path.parent.stat().st_uid == os.geteuid()
        """
    )
    result = pytester.runpytest_subprocess("-p", "netlab", "-s")
    result.assert_outcomes(passed=1)
    (key,) = [Path(line.split("KEY ", 1)[1]) for line in result.outlines if "KEY /" in line]
    assert not key.exists() and not key.parent.exists()


def test_pinned_host_key_accepts_only_the_printed_key():
    printed = paramiko.RSAKey.generate(1024)
    other = paramiko.RSAKey.generate(1024)
    policy = _PinnedHostKey(f"{printed.get_name()} {printed.get_base64()}")
    client = paramiko.SSHClient()
    policy.missing_host_key(client, "h1", printed)  # accepted: no exception
    with pytest.raises(SSHError, match=r"h1: host key ssh-rsa .* does not match the key the guest printed"):
        policy.missing_host_key(client, "h1", other)


def test_a_guest_with_another_host_key_is_refused(h1, netlab_config):
    impostor = paramiko.RSAKey.generate(1024)
    session = SSHSession(
        "h1", h1.host_port(22), netlab_config.key, f"{impostor.get_name()} {impostor.get_base64()}"
    )
    with pytest.raises(SSHError, match="does not match the key the guest printed at boot"):
        session.connect(timeout=10)
    assert not session.connected


def test_management_network_is_restricted_and_on_loopback(h1):
    argv = " ".join(h1.machine.argv)
    assert "restrict=on" in argv and "hostfwd=tcp:127.0.0.1:0-:22" in argv
    assert "hostfwd=tcp::" not in argv and "0.0.0.0" not in argv


def test_helpers_quote_what_they_build(h1):
    with pytest.raises(CommandError):
        h1.set_sysctl("net.ipv4.ip_forward", "0; touch /tmp/pwned")
    assert h1.history[-1].command == "sysctl -qw net.ipv4.ip_forward='0; touch /tmp/pwned'"
    assert h1.ssh("test -e /tmp/pwned", check=False).status == 1
    assert h1.ping("127.0.0.1", interface="lo", timeout=0.5)
    assert h1.history[-1].command == "ping -n -c 1 -W 0.5 -I lo 127.0.0.1"


def _host_state() -> dict[str, object]:
    """What a lab must never change on the host (its own namespaces aside)."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    sysctls = sorted(
        glob.glob("/proc/sys/net/ipv4/ip_forward")
        + glob.glob("/proc/sys/net/ipv4/conf/*/forwarding")
        + glob.glob("/proc/sys/net/ipv6/conf/*/forwarding")
        + glob.glob("/proc/sys/net/bridge/*")
    )
    mine = f"netlab-{os.getpid()}-"
    return {
        "links": run("ip", "-d", "-o", "link", "show"),
        "addresses": run("ip", "-o", "address", "show"),
        "routes": run("ip", "route", "show", "table", "all"),
        "routes6": run("ip", "-6", "route", "show", "table", "all"),
        "rules": run("ip", "rule", "show") + run("ip", "-6", "rule", "show"),
        # other runs on this machine make and remove their own labs meanwhile
        "namespaces": sorted(n for n in run("ip", "netns", "list").split() if n.startswith(mine)),
        "sysctls": {path: Path(path).read_text() for path in sysctls},
    }


def test_a_full_lab_leaves_the_host_as_it_was(netlab_factory):
    before = _host_state()
    assert before["sysctls"], "no forwarding sysctls found to compare"

    with netlab_factory() as lab:
        br1, br2 = lab.bridge("br1"), lab.bridge("br2")
        br1.add_address("10.20.10.254/24")  # a host-only network, inside the lab namespace
        g1 = lab.vm("h1", nics=[br1])
        rt2 = lab.router("rt2", nics=[br1, br2])
        g2 = lab.vm("h2", nics=[br2])
        lab.start()
        g1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up"
               " && ip route add default via 10.20.10.2")
        rt2.ssh("ip addr add 10.20.10.2/24 dev eth0 && ip addr add 10.20.20.2/24 dev eth1"
                " && ip link set eth0 up && ip link set eth1 up")
        g2.ssh("ip addr add 10.20.20.1/24 dev eth0 && ip link set eth0 up"
               " && ip route add default via 10.20.20.2")
        rt2.enable_forwarding(ipv4=True, ipv6=True)
        assert g1.ping("10.20.20.1", timeout=5)
        lab.run("ip link set br2 mtu 1400 && sysctl -qw net.ipv4.ip_forward=1")
        assert lab.run("ping -n -c 1 -W 5 10.20.10.1")
        during = _host_state()
        assert during["sysctls"] == before["sysctls"] and during["links"] == before["links"]
        # as root the lab's namespace is bound under /run/netns; a rootless lab binds none
        made = 1 if os.geteuid() == 0 else 0
        assert len(during["namespaces"]) == len(before["namespaces"]) + made
        assert namespace_exists(lab.name)

    assert _host_state() == before


def test_runtime_dirs_are_private(netlab_config):
    assert stat.S_IMODE(netlab_config.runtime_dir.stat().st_mode) == 0o700
