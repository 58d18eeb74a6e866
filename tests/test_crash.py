"""Crash safety: leftovers of a killed run are removed, a live lab next to it is not
touched, pid reuse is recognised, and a boot that takes too long fails fast and clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_netlab import BootTimeout, cleanup, cli
from pytest_netlab.constants import NETNS_RUN_DIR
from pytest_netlab.owner import Owner

pytest_plugins = ["pytester"]

# the inner run builds a lab, says so in a marker file, and waits to be killed
_VICTIM = """
import os, time

def test_victim(netlab, netlab_config):
    br1 = netlab.bridge("br1")
    {build}
    with open(os.environ["NETLAB_MARKER"] + ".tmp", "w") as f:
        f.write(" ".join([netlab.name, str(netlab_config.runtime_dir), {pids}]))
    os.rename(os.environ["NETLAB_MARKER"] + ".tmp", os.environ["NETLAB_MARKER"])
    time.sleep(600)
"""


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


def _start_and_kill(pytester: pytest.Pytester, build: str, pids: str) -> tuple[str, Path, list[int]]:
    """Run the victim test in a pytest process, wait for its lab, then ``kill -9`` it."""
    pytester.makepyfile(test_victim=_VICTIM.format(build=build, pids=pids))
    marker = pytester.path / "marker"
    victim = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "netlab", "--netlab-accel=tcg", "-q", "-s"],
        cwd=pytester.path, env={**os.environ, "NETLAB_MARKER": str(marker)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert victim.poll() is None, victim.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "the victim never built its lab"
            time.sleep(0.1)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
    namespace, runtime_dir, *children = marker.read_text().split()
    return namespace, Path(runtime_dir), [int(p) for p in children]


@pytest.fixture(scope="module")
def live_lab(netlab_module):
    """A lab of this (live) process that every cleanup here must leave alone."""
    br1 = netlab_module.bridge("br1")
    netlab_module.vm("h1", nics=[br1])
    netlab_module.start()
    return netlab_module


def _assert_untouched(lab, netlab_config) -> None:
    assert (NETNS_RUN_DIR / lab.name).exists()
    assert lab.vms["h1"].ssh("echo alive").stdout == "alive\n"
    assert netlab_config.key.private_path.exists()


def test_kill_9_mid_test_then_netlab_cleanup_removes_the_rest(pytester, live_lab, netlab_config, capsys):
    namespace, runtime_dir, (qemu_pid,) = _start_and_kill(
        pytester, 'vm = netlab.vm("h1", nics=[br1]); netlab.start()', "str(vm.machine.pid)"
    )
    # PR_SET_PDEATHSIG: the QEMU died with its pytest process
    assert _gone(qemu_pid, within=10), _cmdline(qemu_pid)
    # any pytest run starting now on this machine (a neighbour's, or an inner run of this
    # suite on another worker) removes these leftovers too: the report is checked for those
    # still there when `netlab cleanup` (called in-process, to keep that window small) starts
    leftovers = {
        f"removed namespace {namespace}": NETNS_RUN_DIR / namespace,
        f"removed directory {runtime_dir}": runtime_dir,
    }
    present = {line for line, path in leftovers.items() if path.exists()}

    assert cli.main(["cleanup"]) == 0

    reported = capsys.readouterr().out.splitlines()
    assert present <= set(reported), reported
    assert not any(path.exists() for path in leftovers.values())
    _assert_untouched(live_lab, netlab_config)


def test_kill_9_then_the_next_run_removes_the_rest(pytester, live_lab, netlab_config):
    # the daemon's shell dies with its owner (PR_SET_PDEATHSIG); the sleep it forked does
    # not (the death signal is not inherited), but carries NETLAB_OWNER: cleanup kills it
    namespace, runtime_dir, (shell_pid, orphan_pid) = _start_and_kill(
        pytester,
        'daemon = netlab.spawn("sleep 600 & wait"); time.sleep(0.5)',
        'str(daemon.pid), open(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read().split()[0]',
    )
    assert _gone(shell_pid, within=10)
    # (unless a run starting meanwhile on this machine killed it already: see above)
    assert "sleep" in _cmdline(orphan_pid) or not os.path.exists(f"/proc/{orphan_pid}")

    pytester.makepyfile(test_victim="def test_nothing():\n    pass\n")
    nextrun = pytester.runpytest_subprocess("-p", "netlab", "--netlab-accel=tcg")

    nextrun.assert_outcomes(passed=1)
    assert not (NETNS_RUN_DIR / namespace).exists()
    assert not runtime_dir.exists()
    assert _gone(orphan_pid, within=5)
    _assert_untouched(live_lab, netlab_config)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return "(gone)"


def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path):
    me = Owner.me()
    reused = Owner(me.pid, me.ticks - 1)  # this pid, but a process that started earlier
    mine = tmp_path / f"{me.tag}-mine"
    theirs = tmp_path / f"{reused.tag}-reused"
    for directory in (mine, theirs):
        directory.mkdir()

    report = cleanup.remove_leftovers(tmp_path, dry_run=True)

    assert report.directories == [str(theirs)]
    assert me.alive() and not reused.alive()


def test_boot_timeout_is_quick_clear_and_leaves_nothing(netlab):
    vm = netlab.vm("h1", nics=[netlab.bridge("br1")])
    started = time.monotonic()
    with pytest.raises(BootTimeout) as info:
        netlab.start(timeout=0.05)
    assert time.monotonic() - started < 15
    first_line, *console = str(info.value).splitlines()
    assert "h1: guest did not print NETLAB-READY (its SSH server is listening) within 0.05 s" in first_line
    assert "console log" in first_line and "last lines:" in first_line
    assert console == ["  (no console output)"] or all(line.startswith("  h1| ") for line in console)
    pid = vm.machine.pid

    netlab.close()

    assert not (NETNS_RUN_DIR / netlab.name).exists()
    assert _gone(pid, within=5)
