"""Crash safety: leftovers of a killed run are removed, a live lab next to it is not
touched, pid reuse is recognised, and a boot that takes too long fails fast and clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_netlab import BootTimeout, cleanup
from pytest_netlab.constants import NETNS_RUN_DIR
from pytest_netlab.netns import namespace_exists
from pytest_netlab.owner import Owner
from pytest_netlab.session import runtime_base

pytest_plugins = ["pytester"]

# the kill -9 runs see a private /run/netns and runtime dir (a mount namespace of their
# own): root only; a rootless lab's namespaces go with its holder, whose control socket
# closes with the killed run (tests/test_rootless.py)
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="private mount namespaces: root only")

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


@pytest.fixture
def private_run() -> Iterator[Path]:
    """A mount namespace with its own /run/netns and runtime base (tmpfs each).

    Every pytest-netlab run on this machine (a neighbour's, or an inner run of this suite on
    another worker) removes leftovers of dead runs it can see: the victims here and the
    cleanups that must report their leftovers run in here, where no other run looks. Yields
    the namespace's view of the file system (``/proc/<pid>/root``); processes are shared.
    """
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         # mode 0755: a tmpfs is world-writable by default, which the runtime base must not be
         f"mount -t tmpfs -o mode=0755 netlab-test {NETNS_RUN_DIR}"
         f" && mount -t tmpfs -o mode=0755 netlab-test {runtime_base()}"
         " && echo ready && exec sleep 600"],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        yield Path(f"/proc/{holder.pid}/root")
    finally:
        holder.kill()  # its mounts go with it: whatever a failed test left is freed
        holder.wait()


def _inside(view: Path, *command: str) -> list[str]:
    """*command* in the private run's mount namespace (see ``private_run``)."""
    # entering a mount namespace moves to its root: back to where this was run from
    return ["nsenter", f"--target={view.parent.name}", "--mount", f"--wdns={os.getcwd()}", *command]


def _start_and_kill(
    pytester: pytest.Pytester, view: Path, build: str, pids: str
) -> tuple[str, Path, list[int]]:
    """Run the victim test in a pytest process, wait for its lab, then ``kill -9`` it."""
    pytester.makepyfile(test_victim=_VICTIM.format(build=build, pids=pids))
    marker = pytester.path / "marker"
    victim = subprocess.Popen(
        _inside(view, sys.executable, "-m", "pytest", "-p", "netlab", "--netlab-accel=tcg", "-q", "-s"),
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
        victim.send_signal(signal.SIGKILL)  # nsenter execs: this is the pytest process
        victim.communicate()
    namespace, runtime_dir, *children = marker.read_text().split()
    return namespace, Path(runtime_dir), [int(p) for p in children]


def _seen(view: Path, path: Path) -> Path:
    """*path* as the private run sees it."""
    return view / path.relative_to("/")


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


def test_kill_9_mid_test_then_netlab_cleanup_removes_the_rest(private_run, pytester, live_lab, netlab_config):
    namespace, runtime_dir, (qemu_pid,) = _start_and_kill(
        pytester, private_run, 'vm = netlab.vm("h1", nics=[br1]); netlab.start()', "str(vm.machine.pid)"
    )
    # PR_SET_PDEATHSIG: the QEMU died with its pytest process
    assert _gone(qemu_pid, within=10), _cmdline(qemu_pid)
    leftovers = [_seen(private_run, NETNS_RUN_DIR / namespace), _seen(private_run, runtime_dir)]
    assert all(path.exists() for path in leftovers)

    cleanup = subprocess.run(
        _inside(private_run, sys.executable, "-m", "pytest_netlab.cli", "cleanup"),
        capture_output=True, text=True, timeout=60, check=True,
    )

    reported = cleanup.stdout.splitlines()
    assert {f"removed namespace {namespace}", f"removed directory {runtime_dir}"} <= set(reported), reported
    assert not any(path.exists() for path in leftovers)
    _assert_untouched(live_lab, netlab_config)


def test_kill_9_then_the_next_run_removes_the_rest(private_run, pytester, live_lab, netlab_config):
    # the daemon's shell dies with its owner (PR_SET_PDEATHSIG); the sleep it forked does
    # not (the death signal is not inherited), but carries NETLAB_OWNER: cleanup kills it
    namespace, runtime_dir, (shell_pid, orphan_pid) = _start_and_kill(
        pytester, private_run,
        'daemon = netlab.spawn("sleep 600 & wait")\n'
        '    children = f"/proc/{daemon.pid}/task/{daemon.pid}/children"\n'
        "    while not open(children).read(): time.sleep(0.05)  # until the sleep is forked",
        "str(daemon.pid), open(children).read().split()[0]",
    )
    assert _gone(shell_pid, within=10)
    # processes are not private: a run starting meanwhile on this machine may kill it first
    assert "sleep" in _cmdline(orphan_pid) or _cmdline(orphan_pid) in ("", "(gone)")  # "": a zombie

    pytester.makepyfile(test_victim="def test_nothing():\n    pass\n")
    nextrun = pytester.run(*_inside(
        private_run, sys.executable, "-m", "pytest", "-p", "netlab", "--netlab-accel=tcg",
    ))

    nextrun.assert_outcomes(passed=1)
    nextrun.stdout.fnmatch_lines_random([
        f"netlab: leftover of a dead run: removed namespace {namespace}",
        f"netlab: leftover of a dead run: removed directory {runtime_dir}",
    ])
    assert not _seen(private_run, NETNS_RUN_DIR / namespace).exists()
    assert not _seen(private_run, runtime_dir).exists()
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
    # the boot timeout counts from admission: waiting for the machine's guest budget is not booting
    assert time.monotonic() - started - netlab.timings["admission"] < 15
    first_line, *console = str(info.value).splitlines()
    assert "h1: guest did not print NETLAB-READY (its SSH server is listening) within 0.05 s" in first_line
    assert "console log" in first_line and "last lines:" in first_line
    assert console == ["  (no console output)"] or all(line.startswith("  h1| ") for line in console)
    pid = vm.machine.pid

    netlab.close()

    assert not namespace_exists(netlab.name)
    assert _gone(pid, within=5)


def test_every_guest_that_fails_to_come_up_is_reported(netlab):
    br = netlab.bridge("br1")
    vms = [netlab.vm(name, nics=[br]) for name in ("h1", "h2", "h3")]
    with pytest.raises(BootTimeout) as info:
        netlab.start(timeout=0.05)
    first_line, *rest = str(info.value).splitlines()
    assert first_line == "3 guests failed to come up:"
    for name in ("h1", "h2", "h3"):
        assert any(line.startswith(f"- {name}: {name}: guest did not print NETLAB-READY") for line in rest)
    pids = [vm.machine.pid for vm in vms]

    netlab.close()

    assert all(_gone(pid, within=5) for pid in pids)


def test_a_start_interrupted_while_guests_boot_tears_down_at_once(netlab, monkeypatch):
    from pytest_netlab.bringup import BringUp

    def interrupted(futures):
        # Ctrl-C as soon as every guest is launched: their threads still wait for them
        while not all(vm.machine is not None and vm.machine.privileges for vm in netlab.vms.values()):
            if any(f.done() for f in futures.values()):
                break
            time.sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(BringUp, "wait", staticmethod(interrupted))
    br = netlab.bridge("br1")
    vms = [netlab.vm(name, nics=[br]) for name in ("h1", "h2")]
    with pytest.raises(KeyboardInterrupt):
        netlab.start(timeout=600)
    pids = [vm.machine.pid for vm in vms]
    started = time.monotonic()

    netlab.close()

    assert time.monotonic() - started < 30  # not the boot timeout of 600 s
    assert all(_gone(pid, within=5) for pid in pids)
