"""Document 000's cleanup scripts (`ip link set dev vport11 nomaster`, `ip tuntap del`,
`ip link delete dev br1`...), replaced by the lab's teardown. One guest holds all four TAPs
of the three-machine script on br1 and br2; after `netlab.close()` nothing of it is left:
no namespace, no link, no QEMU process, no forwarded port."""

from __future__ import annotations

import os
import socket
import subprocess


def _host_links():
    return set(subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
               .stdout.split("\n"))


def _listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_nothing_is_left_after_the_lab(netlab):
    host_links_before = {line.split(":")[1].strip().split("@")[0] for line in _host_links() if line}
    br1, br2 = netlab.bridge("br1"), netlab.bridge("br2")
    vm = netlab.vm("h1", nics=[br1, br1, br2, br2])
    netlab.start()

    lab_links = {line.split()[0].split("@")[0] for line in netlab.run("ip -br link").stdout.splitlines()}
    assert {"br1", "br2", "vport11", "vport12", "vport21", "vport22"} <= lab_links
    # all of it lives in the lab's namespace: the host's own links are untouched
    host_links = {line.split(":")[1].strip().split("@")[0] for line in _host_links() if line}
    assert not {"br1", "br2", "vport11", "vport12", "vport21", "vport22"} & (host_links - host_links_before)
    pid, port = vm.machine.pid, vm.host_port(22)
    assert _listening(port)

    netlab.close()

    assert netlab.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not os.path.exists(f"/run/netns/{netlab.name}")
    assert not os.path.exists(f"/proc/{pid}")
    assert not _listening(port)
    host_links_after = {line.split(":")[1].strip().split("@")[0] for line in _host_links() if line}
    assert not {"br1", "br2", "vport11", "vport12", "vport21", "vport22"} & (host_links_after - host_links_before)
