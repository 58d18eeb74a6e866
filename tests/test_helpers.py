"""Helpers for test authors, in real guests: waiting, file copy, cable pull, link
impairment and packet capture."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import pytest

from pytest_netlab import CommandError, ConfigError, SSHError, TransferError, WaitTimeout
from pytest_netlab.netns import host_has_qdisc
from pytest_netlab.pcap import read_pcap


def test_wait_until_and_until_fails_retry_and_report_the_last_attempt(netlab):
    vm = netlab.vm("h1")
    netlab.start()
    vm.ssh("(sleep 1; touch /tmp/flag) >/dev/null 2>&1 &")
    assert vm.wait_until("test -e /tmp/flag && echo there", timeout=20, interval=0.2) == (
        "exit status 0\n--- stdout ---\nthere\n--- stderr ---\n"
    )
    vm.ssh("(sleep 1; rm /tmp/flag) >/dev/null 2>&1 &")
    vm.wait_until_fails("test -e /tmp/flag", timeout=20, interval=0.2)

    with pytest.raises(WaitTimeout) as info:
        vm.wait_until("echo seen-last; exit 3", timeout=1, interval=0.3)
    message = str(info.value)
    assert "'echo seen-last; exit 3' succeeds: not reached within 1 s" in message
    assert "exit status 3" in message and "seen-last" in message
    assert isinstance(info.value, AssertionError)

    calls = []

    def third_time_lucky():
        calls.append(1)
        assert len(calls) >= 3, f"only {len(calls)} calls"
        return "ok"

    vm.wait_until(third_time_lucky, timeout=10, interval=0.05)
    assert len(calls) == 3
    with pytest.raises(WaitTimeout, match="returned 'ok'"):
        vm.wait_until_fails(third_time_lucky, timeout=0.2, interval=0.05)
    with pytest.raises(ConfigError, match="wait timeout -1"):
        vm.wait_until("true", timeout=-1)


def test_put_and_get_over_sftp_keep_large_files_intact_and_name_the_failing_path(netlab, tmp_path):
    vm = netlab.vm("h1")
    netlab.start()
    data = os.urandom(4 * 1024 * 1024 + 17)
    (tmp_path / "big.bin").write_bytes(data)
    started = time.monotonic()
    vm.put(tmp_path / "big.bin", "/tmp/big.bin", mode=0o640)
    vm.get("/tmp/big.bin", tmp_path / "back.bin")
    elapsed = time.monotonic() - started
    digest = hashlib.sha256(data).hexdigest()
    assert vm.ssh("sha256sum /tmp/big.bin; stat -c %a /tmp/big.bin").stdout.split() == [
        digest, "/tmp/big.bin", "640",
    ]
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == digest
    assert elapsed < 20, f"8 MiB over SFTP took {elapsed:.1f} s"
    # an empty file, and a mode change on an existing one
    (tmp_path / "empty").write_bytes(b"")
    vm.put(tmp_path / "empty", "/tmp/big.bin", mode=0o600)
    assert vm.ssh("stat -c '%s %a' /tmp/big.bin").stdout.split() == ["0", "600"]
    assert vm.get("/tmp/big.bin", tmp_path / "empty.back").read_bytes() == b""

    server = vm.ssh("pidof sftp-server").stdout.split()  # the connection's one SFTP session
    assert len(server) == 1
    missing = r"h1: get /no/such/file -> .*: /no/such/file: No such file"
    with pytest.raises(TransferError, match=missing) as info:
        vm.get("/no/such/file", tmp_path / "never")
    assert isinstance(info.value, CommandError) and info.value.path == "/no/such/file"
    assert not (tmp_path / "never").exists()
    with pytest.raises(TransferError, match=r": /tmp: is a directory"):
        vm.get("/tmp", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(TransferError, match=rf": {tmp_path}/missing-dir: no such local directory"):
        vm.get("/tmp/big.bin", tmp_path / "missing-dir" / "f")
    with pytest.raises(TransferError, match=rf": {tmp_path}/absent: No such file or directory"):
        vm.put(tmp_path / "absent", "/tmp/x")
    with pytest.raises(TransferError, match=r": /no/such/dir/f: No such file"):
        vm.put(tmp_path / "empty", "/no/such/dir/f")
    with pytest.raises(ConfigError, match=r"mode '644' is not accepted: give a file mode from 0o0 to 0o7777"):
        vm.put(tmp_path / "empty", "/tmp/x", mode="644")
    with pytest.raises(ConfigError, match=r"remote path None is not accepted"):
        vm.get(None, tmp_path / "x")
    with pytest.raises(ConfigError, match=r"local path 3 is not accepted: give a str or a pathlib.Path"):
        vm.put(3, "/tmp/x")
    # the SFTP session survives its errors and is one per connection
    vm.put(tmp_path / "empty", "/tmp/after-errors")
    assert vm.ssh("test -e /tmp/after-errors").ok
    assert vm.ssh("pidof sftp-server").stdout.split() == server
    assert [r.command.split()[:2] for r in vm.history if r.command.startswith("sftp")][:2] == [
        ["sftp", "put"], ["sftp", "get"],
    ]


def test_a_guest_without_sftp_server_gets_an_error_that_says_to_rebuild_the_image(netlab, tmp_path):
    vm = netlab.vm("h1")
    netlab.start()
    vm.ssh("rm /usr/lib/sftp-server")  # as in an image built before it had one
    (tmp_path / "f").write_bytes(b"x")
    rebuild = r"^h1: no SFTP session \(.*\): the guest image needs /usr/lib/sftp-server; rebuild it"
    with pytest.raises(SSHError, match=rebuild):
        vm.put(tmp_path / "f", "/tmp/f")
    assert vm.ssh("echo still-fine").stdout == "still-fine\n"


def test_pulling_the_cable_is_seen_as_carrier_loss(netlab):
    br1 = netlab.bridge("br1")
    vm = netlab.vm("h1", nics=[br1, br1])
    netlab.start()
    vm.ssh("ip link set eth0 up && ip link set eth1 up")
    carrier = "cat /sys/class/net/eth1/carrier"
    assert vm.ssh(carrier).stdout == "1\n"
    vm.set_link("eth1", up=False)
    vm.wait_until(f"test $({carrier}) = 0", timeout=10, interval=0.1)
    assert vm.ssh("cat /sys/class/net/eth0/carrier").stdout == "1\n"
    vm.set_link(1, up=True)
    vm.wait_until(f"test $({carrier}) = 1", timeout=10, interval=0.1)
    with pytest.raises(ConfigError, match="NIC 'eth7' of 'h1'"):
        vm.set_link("eth7", up=False)


def test_lab_nics_are_named_by_their_eth_number_when_a_nat_nic_comes_first(netlab):
    br1, br2 = netlab.bridge("br1"), netlab.bridge("br2")
    vm = netlab.vm("h1", nics=[netlab.nat(), br1, br2])  # eth0 NAT, eth1 vport11, eth2 vport21

    assert [vm.nic_index(n) for n in ("eth1", 2, br1, "br2", "vport21")] == [1, 2, 1, 2, 2]
    assert [vm._tap(1), vm._tap(2)] == ["vport11", "vport21"]
    with pytest.raises(ConfigError, match=r"NIC 'eth0' of 'h1' is its NAT NIC \(eth0\)"):
        vm.nic_index("eth0")
    with pytest.raises(ConfigError, match=r"NIC 'eth3' of 'h1' is not accepted: .*\(vport11, vport21\)"):
        vm.nic_index("eth3")


def test_delay_shows_in_the_rtt_and_full_loss_breaks_the_ping(netlab):
    br1 = netlab.bridge("br1")
    h1 = netlab.vm("h1", nics=[br1])
    h2 = netlab.vm("h2", nics=[br1])
    h2.impair(0, delay_ms=50)  # before start: from the first packet on
    netlab.start()
    h1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up")
    h2.ssh("ip addr add 10.20.10.2/24 dev eth0 && ip link set eth0 up")
    first = h1.ping("10.20.10.2", count=3, timeout=5)
    assert first and first.rtt_min is not None and first.rtt_min >= 50

    h1.impair("eth0", delay_ms=100, jitter_ms=5)
    assert "delay 100ms  5ms" in h1.ssh("tc qdisc show dev eth0").stdout
    delayed = h1.ping("10.20.10.2", count=3, timeout=5)
    assert delayed.rtt_min is not None and delayed.rtt_min >= 145

    h1.impair(0, loss_percent=100)
    assert not h1.ping("10.20.10.2", count=3, timeout=1)
    h1.impair(0)
    h2.impair(0)
    assert "netem" not in h1.ssh("tc qdisc show").stdout + h2.ssh("tc qdisc show").stdout
    assert h1.ping("10.20.10.2", timeout=5)

    with pytest.raises(ConfigError, match="loss_percent 150 is not accepted"):
        h1.impair(0, loss_percent=150)
    with pytest.raises(ConfigError, match="jitter_ms 5 needs a delay"):
        h1.impair(0, jitter_ms=5)


def _seconds_to_send(netlab, vm, address: str, size: int) -> float:
    """Send *size* bytes over TCP from the lab namespace to the guest; return how long
    until the guest had them all."""
    vm.ssh("rm -f /tmp/received; nc -l -p 5001 > /tmp/received 2>/dev/null </dev/null &")
    started = time.monotonic()
    deadline = started + 20
    while True:
        sock = netlab.namespace.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(20)
        try:
            sock.connect((address, 5001))
            break
        except ConnectionRefusedError:  # nc not listening yet
            sock.close()
            assert time.monotonic() < deadline, "nc in the guest never listened"
            time.sleep(0.05)
    with sock:
        started = time.monotonic()
        sock.sendall(bytes(size))  # returns once the bytes are in the socket's buffer
        sock.shutdown(socket.SHUT_WR)
        vm.wait_until(f"test $(wc -c < /tmp/received) = {size}", timeout=20, interval=0.05)
        return time.monotonic() - started


def test_a_rate_on_the_tap_slows_the_traffic_to_the_guest_until_lifted(netlab):
    br1 = netlab.bridge("br1")
    vm = netlab.vm("h1", nics=[br1])
    placed = vm.impair(0, rate_kbit=800, where="tap")  # before start: set once the TAP exists
    assert placed.where == "tap"
    netlab.start()
    br1.add_address("10.20.30.1/24")
    vm.ssh("ip addr add 10.20.30.2/24 dev eth0 && ip link set eth0 up")
    (tap,) = [link["ifname"] for link in json.loads(netlab.run("ip -j link show master br1").stdout)]
    assert netlab.namespace.root_qdisc(tap) == "tbf"
    assert "netem" not in vm.ssh("tc qdisc show dev eth0").stdout  # nothing in the guest
    slow = _seconds_to_send(netlab, vm, "10.20.30.2", 200_000)
    # 200 kB at 800 kbit/s is 2 s; the first 10 ms worth (the burst) goes at once
    assert slow >= 1.7, f"200 kB at 800 kbit/s took only {slow:.2f} s"

    vm.impair(0)  # all defaults: removed
    assert netlab.namespace.root_qdisc(tap) != "tbf"
    fast = _seconds_to_send(netlab, vm, "10.20.30.2", 200_000)
    assert fast < slow / 2, f"without the rate limit: {fast:.2f} s, with it {slow:.2f} s"

    # a rate alone goes to the TAP by default where the host has tbf; changeable in place
    if host_has_qdisc("tbf"):
        assert vm.impair(0, rate_kbit=8000).where == "tap"
        assert netlab.namespace.root_qdisc(tap) == "tbf"
        assert "tbf" not in vm.ssh("tc qdisc show dev eth0").stdout
    else:
        assert vm.impair(0, rate_kbit=8000).where == "guest"
        assert "rate 8Mbit" in vm.ssh("tc qdisc show dev eth0").stdout
    if host_has_qdisc("netem"):
        assert vm.impair(0, delay_ms=20, where="tap").where == "tap"
        assert netlab.namespace.root_qdisc(tap) == "netem"  # what goes to the guest is delayed:
        reply = vm.ping("10.20.30.1", count=3, timeout=5)  # the replies to its pings
        assert reply and reply.rtt_min is not None and reply.rtt_min >= 20, reply
    else:
        with pytest.raises(ConfigError, match=r"where='tap' needs the netem qdisc, .*use where='guest'"):
            vm.impair(0, delay_ms=20, where="tap")
        # auto: netem in the guest instead, and the TAP's tbf is taken off
        assert vm.impair(0, delay_ms=20).where == "guest"
        assert netlab.namespace.root_qdisc(tap) != "tbf"
        assert "delay 20ms" in vm.ssh("tc qdisc show dev eth0").stdout
    with pytest.raises(ConfigError, match="where 'both' is not accepted: give 'auto', 'tap'"):
        vm.impair(0, rate_kbit=100, where="both")
    vm.impair(0)
    assert "netem" not in vm.ssh("tc qdisc show dev eth0").stdout
    assert netlab.namespace.root_qdisc(tap) != "tbf"


def test_capture_shows_what_crossed_a_bridge(netlab):
    br1 = netlab.bridge("br1")
    h1 = netlab.vm("h1", nics=[br1])
    h2 = netlab.vm("h2", nics=[br1])
    netlab.start()
    h1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up")
    h2.ssh("ip addr add 10.20.10.2/24 dev eth0 && ip link set eth0 up")
    with netlab.capture(br1) as cap:
        assert h1.ping("10.20.10.2", count=2, timeout=5)
    requests = cap.arp_requests(sender_ip="10.20.10.1", target_ip="10.20.10.2")
    assert requests and all(p.broadcast and p.src_mac == h1.macs[0] for p in requests)
    echo = cap.icmp(src_ip="10.20.10.1", dst_ip="10.20.10.2")
    assert [p.icmp_type for p in echo] == [8, 8]
    assert [p.icmp_type for p in cap.icmp(src_ip="10.20.10.2")] == [0, 0]
    assert cap.path.exists()
    # the per-lab switch: every bridge recorded from now on, until the lab closes
    netlab.record_bridges()
    br2 = netlab.bridge("br2")
    assert [p.name for p in netlab.pcap_files] == ["br1.pcap", "br2.pcap"]
    h1.ssh("arping -c 1 -w 1 10.20.10.9 || ping -c 1 -W 1 10.20.10.9", check=False)
    h1.wait_until(
        lambda: any(p.dst_ip == "10.20.10.9" for p in read_pcap(netlab.pcap_dir / "br1.pcap")),
        timeout=5, interval=0.1,
    )
    # br2, made after the switch, is recorded too, and its file holds br2's traffic only
    br2.add_address("10.20.40.1/24")
    netlab.run("ping -c 1 -W 1 10.20.40.9", check=False)
    h1.wait_until(
        lambda: any(p.dst_ip == "10.20.40.9" for p in read_pcap(netlab.pcap_dir / "br2.pcap")),
        timeout=5, interval=0.1,
    )
    assert not any(p.dst_ip == "10.20.10.9" for p in read_pcap(netlab.pcap_dir / "br2.pcap"))
    with pytest.raises(ConfigError, match="bridge 'br9' is not in this lab"), netlab.capture("br9"):
        pass


def test_bad_routes_and_nics_are_refused_before_the_guest_is_asked(netlab):
    h1 = netlab.vm("h1", nics=[netlab.bridge("br1")])  # not started: nothing reaches a guest
    for to, via, message in [
        ("10.20.20.0/24", "fd00::1", "route to '10.20.20.0/24' via 'fd00::1' is not accepted"),
        ("10.20.20.1/24", "10.20.10.2", "route to '10.20.20.1/24' is not accepted"),
        ("default", "nowhere", "address 'nowhere' is not accepted"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            h1.set_route(to, via=via)
    with pytest.raises(ConfigError, match="NIC 'eth3' of 'h1' is not accepted"):
        h1.interface_up("eth3")
