"""The pytest glue, through pytester: options, ini values, usage errors, the header."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]


def test_options_are_in_a_netlab_group_with_defaults(pytester: pytest.Pytester):
    result = pytester.runpytest("-p", "netlab", "--help")
    result.stdout.fnmatch_lines(
        [
            "*pytest-netlab*",
            "*--netlab-accel={auto,kvm,tcg}*",
            "*--netlab-boot-timeout=SECONDS*",
            "*--netlab-artifacts=DIR*",
            "*(default: netlab-artifacts inside the test's*",
            "*--netlab-pcap=*{off,on-failure,always}*",
            "*(default: off)*",
        ]
    )
    result.stdout.fnmatch_lines(["*netlab_accel (string):", "*accelerator: auto, kvm or tcg (default auto)"])


def test_bad_accelerator_in_ini_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\nnetlab_accel = xen\n")
    result = pytester.runpytest("-p", "netlab")
    result.stderr.fnmatch_lines(["*netlab_accel = 'xen' is not accepted: use one of auto, kvm, tcg*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_bad_timeout_is_a_usage_error(pytester: pytest.Pytester):
    result = pytester.runpytest("-p", "netlab", "--netlab-boot-timeout=-3")
    result.stderr.fnmatch_lines(["*boot timeout -3.0 is not accepted*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_header_names_the_accelerator_and_a_lab_test_passes(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        def test_one_guest(netlab):
            vm = netlab.vm("solo")
            netlab.start()
            assert vm.ssh("echo hi").stdout == "hi\\n"
        """
    )
    result = pytester.runpytest_subprocess("-p", "netlab", "--netlab-accel=tcg")
    result.stdout.fnmatch_lines(["netlab: accelerator tcg (requested)*", "*1 passed*"])


def test_failed_lab_test_still_tears_down(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import os
        def test_fails(netlab):
            netlab.bridge("br1")
            vm = netlab.vm("h1")
            netlab.start()
            with open(os.environ["NETLAB_PROBE"], "w") as f:
                f.write(f"{netlab.name} {vm.machine.pid}")
            assert vm.ping("10.99.99.99", timeout=0.5)
        """
    )
    probe = pytester.path / "probe.txt"
    env = {**os.environ, "NETLAB_PROBE": str(probe)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "netlab", "--netlab-accel=tcg", "-q"],
        cwd=pytester.path, env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ping 10.99.99.99: nothing sent (ping: connect: Network is unreachable)" in proc.stdout
    namespace, pid = probe.read_text().split()
    assert not os.path.exists(f"/run/netns/{namespace}")
    assert not os.path.exists(f"/proc/{pid}")
