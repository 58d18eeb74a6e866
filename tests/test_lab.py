"""The core lab in real guests: names, MACs, SSH results, teardown, failures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pytest_netlab import CommandError, CommandTimeout, GuestGoneError, WaitTimeout
from pytest_netlab.netns import namespace_exists
from pytest_netlab.privileges import let_qemu_write, qemu_identity
from pytest_netlab.templates import Layout, Template


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_clones_of_one_template_have_their_own_host_key_and_randomness(netlab):
    br1 = netlab.bridge("br1")
    h1, h2 = netlab.vm("h1", nics=[br1]), netlab.vm("h2", nics=[br1])
    netlab.start()  # both resumed from the same saved state, then personalised

    keys = [vm.ssh("cat /etc/dropbear/dropbear_ed25519_host_key.pub").stdout.split()[:2] for vm in (h1, h2)]
    assert keys[0] != keys[1]
    # what SSH was pinned to is the key each guest serves
    assert [" ".join(k) for k in keys] == [h1.machine.marks.host_key, h2.machine.marks.host_key]
    randomness = {vm.ssh("head -c 16 /dev/urandom | od -An -tx1").stdout for vm in (h1, h2)}
    assert len(randomness) == 2


# The copies once shared the template's CRNG (wg genkey gave one key in three guests, 2
# runs of 4): each round reads first thing after start(), when a shared state would show.
@pytest.mark.parametrize("round_", [1, 2, 3])
def test_clones_of_one_template_rekey_their_crng_before_they_are_ready(netlab, round_):
    br1 = netlab.bridge("br1")
    vms = [netlab.vm(f"h{i}", nics=[br1]) for i in (1, 2, 3)]
    netlab.start()

    read = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/boot_id"
    with ThreadPoolExecutor(len(vms)) as pool:
        outputs = list(pool.map(lambda vm: vm.ssh(read).stdout.split(), vms))
    assert all(len(out) == 2 and len(out[0]) == 64 for out in outputs), outputs
    assert len({out[0] for out in outputs}) == len(vms), f"clones read the same random bytes: {outputs}"
    assert len({out[1] for out in outputs}) == len(vms), f"clones have the same boot_id: {outputs}"


def test_guest_sees_lab_nics_in_order_with_distinct_macs(netlab):
    br1, br2 = netlab.bridge("br1"), netlab.bridge("br2")
    h1 = netlab.vm("h1", nics=[br1, br2, br1.nic(mac="12:34:56:AB:CD:7B")])
    lonely = netlab.vm("lonely", nics=[])
    netlab.start()

    links = {
        line.split()[0]: line.split()[2]
        for line in h1.ssh("ip -br link").stdout.splitlines()
    }
    assert links["eth0"] == h1.macs[0] and links["eth1"] == h1.macs[1]
    assert links["eth2"] == "12:34:56:ab:cd:7b"
    assert len(set(h1.macs)) == 3
    # the management NIC is extra: not ethN, no default route
    assert "mgmt0" in links and sorted(n for n in links if n.startswith("eth")) == ["eth0", "eth1", "eth2"]
    assert h1.ssh("ip route show default").stdout.strip() == ""
    assert sorted(lonely.ssh("ls /sys/class/net").stdout.split()) == ["lo", "mgmt0"]
    assert h1.ssh("hostname").stdout.strip() == "h1"
    # the TAPs are in the lab namespace, each on its own NIC's bridge, named as in the documents
    assert h1.taps == ["vport11", "vport21", "vport12"]
    assert _masters(netlab) == {"vport11": "br1", "vport21": "br2", "vport12": "br1"}


def _masters(netlab) -> dict[str, str]:
    """Port -> bridge, as the lab namespace has them."""
    links = json.loads(netlab.run("ip -j link show").stdout)
    return {link["ifname"]: link["master"] for link in links if "master" in link}


def test_two_bridges_are_two_segments(netlab):
    br1, br2 = netlab.bridge("br1"), netlab.bridge("br2")
    h1, h2 = netlab.vm("h1", nics=[br1]), netlab.vm("h2", nics=[br1])
    other = netlab.vm("other", nics=[br2])
    netlab.start()
    # one subnet on both bridges: only the bridge can keep them apart
    for number, vm in enumerate((h1, h2, other), start=1):
        vm.ssh(f"ip addr add 10.50.0.{number}/24 dev eth0 && ip link set eth0 up")

    assert h1.ping("10.50.0.2", timeout=5)  # same bridge
    assert not h1.ping("10.50.0.3", count=2, timeout=1)  # the other bridge
    assert not other.ping("10.50.0.1", count=2, timeout=1)


# an IPv6 default route or a global address (QEMU's user-mode network advertises fec0::/64)
IPV6_BEYOND_LINK_LOCAL = (
    "ip -6 route show default | grep . || ip -6 addr show dev mgmt0 scope global | grep ."
)


def test_the_management_nic_gets_no_ipv6_route_or_address(netlab):
    resumed, cold = netlab.vm("h1"), netlab.vm("h2", append="quiet")  # append: a cold boot
    netlab.start()

    # router advertisements answer the router solicitations the guests send when mgmt0
    # comes up, then every few seconds: nothing may arrive in a wait longer than that
    for vm in (resumed, cold):
        with pytest.raises(WaitTimeout):
            vm.wait_until(IPV6_BEYOND_LINK_LOCAL, timeout=8.0 if vm is resumed else 0.5)
        # the guest did ask for a router: its IPv6 is on, nobody answered
        solicits = vm.ssh("grep Icmp6OutRouterSolicits /proc/net/snmp6").stdout.split()[1]
        assert int(solicits) >= 1
        assert vm.ssh("ip -6 -o addr show dev mgmt0").stdout.count("inet6") == 1  # fe80::, link-local


def test_ssh_result_and_failures_carry_command_status_and_streams(netlab):
    vm = netlab.vm("h1")
    netlab.start()

    result = vm.ssh("echo out; echo err >&2; exit 3", check=False)
    assert (result.status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result

    with pytest.raises(CommandError) as info:
        vm.ssh("echo visible; echo why >&2; false")
    message = str(info.value)
    assert "h1" in message and "'echo visible; echo why >&2; false'" in message
    assert "status 1" in message and "visible" in message and "why" in message

    with pytest.raises(CommandTimeout, match=r"did not finish within 0\.5 s"):
        vm.ssh("sleep 5", timeout=0.5)
    # the connection survives a failed command and stays the same connection
    assert vm.ssh("echo again").stdout == "again\n"
    assert [r.status for r in vm.history][-2:] == [None, 0]


def test_ssh_port_is_forwarded_on_loopback_only_and_gone_after_teardown(netlab):
    vm = netlab.vm("h1")
    netlab.start()
    port = vm.host_port(22)
    assert _listening(port)
    listeners = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    local_addresses = [line.split()[3] for line in listeners.splitlines()]
    assert local_addresses == [f"127.0.0.1:{port}"]
    assert vm.ssh("ip -4 -o addr show mgmt0").stdout.split()[3] == "100.127.255.15/24"
    pid = vm.machine.pid
    namespace = netlab.name

    netlab.close()

    assert not _listening(port)
    assert not namespace_exists(namespace)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    netlab.close()  # idempotent


def test_a_guest_that_powered_off_fails_fast(netlab):
    vm = netlab.vm("h1")
    netlab.start()
    vm.ssh("poweroff -f >/dev/null 2>&1 &", check=False)
    deadline = time.monotonic() + 30
    while vm.machine.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(GuestGoneError, match="not running any more"):
        vm.ssh("true")
    with pytest.raises(GuestGoneError, match="not running any more"):
        vm.ping("127.0.0.1")
    with pytest.raises(GuestGoneError, match="QEMU is not running"):
        vm.host_port(22)
    assert time.monotonic() - started < 1


def test_console_run_reaches_a_networked_guest_too(netlab):
    vm = netlab.vm("h1")
    netlab.start()
    result = vm.console_run("echo out; echo err >&2; cd /tmp; false", check=False)
    assert (result.status, result.stdout) == (1, "out\nerr\n")
    assert vm.console_run("pwd").stdout == "/\n"  # each command in a subshell of its own
    assert vm.console_run("printf 'no newline'").stdout == "no newline"
    with pytest.raises(CommandError, match="status 1"):
        vm.console_run("false")


def test_kernel_parameters_of_a_guest_of_its_own_reach_its_kernel(netlab):
    # a resumed guest would keep the template's command line: this one boots cold
    vm = netlab.vm("h1", append="netlab.debug=1 quiet")
    netlab.start()

    assert vm.ssh("cat /proc/cmdline").stdout.split()[-2:] == ["netlab.debug=1", "quiet"]
    # netlab.debug=1: the init's timed stages on the console
    assert "NETLAB-DEBUG" in vm.console_log.read_text()


def test_a_damaged_saved_state_is_made_again(netlab):
    # a layout of its own (224 MiB), so that no other test resumes from the damaged file
    layout = Layout(224, 1, netlab.settings.accel, (), numa=False)
    store = netlab.settings.templates
    state = store.root / f"{store._digest(layout, netlab.default_image)}.state"
    state.parent.mkdir(parents=True, exist_ok=True)
    damaged = b"QEVM" + bytes(4096)  # the magic, then nothing QEMU can use
    state.write_bytes(damaged)
    if store.memory_method(layout) == "file":  # the template's RAM file, whole but blank
        template = Template(state, state.with_suffix(".ram"))
        with open(state.with_suffix(".ram"), "wb") as ram:
            ram.truncate(224 << 20)
        let_qemu_write(state.with_suffix(".ram"), qemu_identity())
        template.seal("test")  # its stamp: the template looks whole
    vm = netlab.vm("h1", memory=224)
    netlab.start()  # QEMU refuses it: made again (one cold boot), then resumed from

    assert vm.ssh("echo up").stdout == "up\n"
    assert state.read_bytes()[:len(damaged)] != damaged
