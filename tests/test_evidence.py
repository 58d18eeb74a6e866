"""Evidence of a failed lab test: report sections and files, captured before teardown."""

from __future__ import annotations

import pytest

from pytest_netlab.artifacts import sanitize_nodeid, split_sections
from pytest_netlab.pcap import read_pcap

pytest_plugins = ["pytester"]


def test_a_failed_lab_test_leaves_evidence_in_the_report_and_on_disk(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_inner="""
        def test_ping_across(netlab):
            br1 = netlab.bridge("br1")
            h1 = netlab.vm("h1", nics=[br1])
            h2 = netlab.vm("h2", nics=[br1])
            netlab.start()
            h2.impair(0, rate_kbit=8000, where="tap")  # a TAP qdisc, in the lab namespace
            h1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up")
            h1.ssh("echo marker-command", check=False)
            h1.ssh("exit 7", check=False)
            assert h1.ping("10.20.10.2", timeout=0.5), "h2 has no address: the ping must fail"

        def test_guest_gone(netlab):
            vm = netlab.vm("gone")
            netlab.start()
            vm.ssh("poweroff -f >/dev/null 2>&1 &", check=False)  # it may end the shell first
            vm.wait_until_fails(lambda: vm.machine.is_running(), timeout=30, interval=0.1)
            vm.ssh("true")
        """
    )
    out = pytester.path / "evidence"
    result = pytester.runpytest_subprocess(
        "-p", "netlab", "--netlab-accel=tcg", f"--netlab-artifacts={out}",
    )
    result.assert_outcomes(failed=2)
    test_dir = out / sanitize_nodeid("test_inner.py::test_ping_across")
    result.stdout.fnmatch_lines(
        [
            "*- netlab artifacts -*",
            f"evidence of the failure in {test_dir}*",
            "*- netlab h1 -*",
            f"files: {test_dir / 'h1'}",
            "--- commands run (time, status, duration, command) ---",
            "*exit 0*ip addr add 10.20.10.1/24 dev eth0*",
            "*exit 0*echo marker-command",
            "*exit 7*exit 7",
            "*exit 1*ping -n -c 1 -W 0.5 10.20.10.2",
            "*--- ip addr (brief) ---",
            "eth0 <*UP*> 10.20.10.1/24*",
            "--- ip neigh ---",
            "10.20.10.2 dev eth0 *",
            "*--- console (last 30 lines) ---",
            "*- netlab h2 -*",
        ]
    )
    # the capture's own command is not in the test's history
    assert "@@netlab-section" not in result.stdout.str()
    for name in ("console.log", "commands.txt", "addr.txt", "route.txt", "neigh.txt", "sysctl.txt"):
        assert (test_dir / "h1" / name).stat().st_size > 0, name
    assert "10.20.10.1/24" in (test_dir / "h1" / "addr.txt").read_text()
    assert "net.ipv4.ip_forward = 0" in (test_dir / "h1" / "sysctl.txt").read_text()
    links = (test_dir / "lab-namespace" / "bridge-link.txt").read_text().splitlines()
    # "3: vport11: <...> mtu 1500 master br1 state forwarding ...": port -> bridge, exactly
    masters = {line.split()[1].rstrip(":"): line.split()[line.split().index("master") + 1] for line in links}
    assert masters == {"vport11": "br1", "vport12": "br1"}, links
    assert "qdisc tbf 1: dev vport12 root" in (test_dir / "lab-namespace" / "qdisc.txt").read_text()
    result.stdout.fnmatch_lines(["*--- tc qdisc ---", "qdisc tbf 1: dev vport12 root * rate 8Mbit *"])
    commands = (test_dir / "h1" / "commands.txt").read_text().splitlines()
    assert [line.split()[2] for line in commands] == ["0", "0", "7", "1"]
    # a guest that died still leaves its console and history, and the note says why
    gone = out / sanitize_nodeid("test_inner.py::test_guest_gone")
    assert "poweroff -f" in (gone / "gone" / "commands.txt").read_text()
    assert (gone / "gone" / "console.log").exists()
    result.stdout.fnmatch_lines(["*GuestGoneError*", "note: guest's QEMU is not running (exit status 0)*"])


def test_pcap_of_every_bridge_is_kept_with_the_evidence_of_a_failure(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_inner="""
        def test_fails(netlab):
            br1, br2 = netlab.bridge("br1"), netlab.bridge("br2")
            h1 = netlab.vm("h1", nics=[br1])
            netlab.start()
            h1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up")
            h1.ping("10.20.10.9", timeout=0.3)
            assert False, "evidence wanted"

        def test_passes(netlab):
            netlab.bridge("br1")
        """
    )
    out = pytester.path / "evidence"
    result = pytester.runpytest_subprocess(
        "-p", "netlab", "--netlab-accel=tcg", "--netlab-pcap", f"--netlab-artifacts={out}",
    )
    result.assert_outcomes(failed=1, passed=1)
    failed = out / sanitize_nodeid("test_inner.py::test_fails")
    assert {p.name for p in failed.glob("*.pcap")} == {"br1.pcap", "br2.pcap"}
    packets = read_pcap(failed / "br1.pcap")
    assert any(p.arp_op == "request" and p.dst_ip == "10.20.10.9" for p in packets)
    # a test that passed leaves no evidence, and (on-failure) no pcap
    assert not (out / sanitize_nodeid("test_inner.py::test_passes")).exists()
    assert not list(pytester.path.parent.glob("**/test_passes*/netlab/pcap/*.pcap"))


def test_node_ids_become_safe_directory_names():
    assert sanitize_nodeid("tests/test_a.py::test_b[x-1/2 y]") == "tests_test_a.py__test_b_x-1_2_y"
    assert sanitize_nodeid("tests/test_a.py::test_b[x]") == "tests_test_a.py__test_b_x"  # docs/evidence.md
    assert sanitize_nodeid("::") == "test"


def test_state_output_splits_into_named_parts():
    text = "@@netlab-section addr\n1: lo\n@@netlab-section route\n@@netlab-section neigh\nx\n"
    assert split_sections(text) == {"addr": "1: lo\n", "route": "", "neigh": "x\n"}


def test_a_failed_lab_test_reports_no_qmp_error_from_the_teardown(pytester: pytest.Pytester):
    # QEMU closes QMP after "quit": qemu.qmp saw ConnectionResetError and logged it as ERROR
    pytester.makepyfile(
        test_inner="""
        import pytest

        @pytest.mark.parametrize("run", range(3))  # the reset came in about one teardown in two
        def test_fails(netlab, run):
            netlab.vm("h1")
            netlab.start()
            assert False, "fails on purpose"
        """
    )
    result = pytester.runpytest_subprocess("-p", "netlab", "--netlab-accel=tcg")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*fails on purpose*"])
    assert [line for line in result.stdout.lines if "qemu.qmp" in line] == []
