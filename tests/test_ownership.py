"""Cleanup decides ownership by the owner's kernel start time, never by a clock, and
removes only what names an owner that is gone: crafted leftovers in a crafted runtime
base and template store."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import netns

from pytest_netlab import cleanup
from pytest_netlab.constants import NETNS_RUN_DIR
from pytest_netlab.owner import Owner, namespace_holder, namespace_owner, owners_dir, start_ticks


@pytest.fixture
def dead_owner() -> Owner:
    """An owner that ran and is gone."""
    proc = subprocess.Popen(["sleep", "60"])
    ticks = start_ticks(proc.pid)
    assert ticks is not None
    proc.kill()
    proc.wait()
    return Owner(proc.pid, ticks)


@pytest.fixture
def foreign_namespace(dead_owner: Owner):
    if os.geteuid() != 0:
        pytest.skip("a namespace bound under /run/netns by someone else: root only (rootless labs bind none)")
    """A namespace named like the plugin's, of a pid that is gone, made by someone else."""
    name = f"netlab-{dead_owner.pid}-{secrets.token_hex(3)}"
    netns.create(name)
    yield name
    netns.remove(name)


def test_a_clock_step_does_not_make_a_live_owner_look_dead(tmp_path: Path):
    directory = tmp_path / f"{Owner.me().tag}-live"
    directory.mkdir()
    for stamp in (0.0, time.time() + 10 * 365 * 86400):  # 1970, ten years ahead
        os.utime(directory, (stamp, stamp))
        assert cleanup.remove_leftovers(tmp_path, dry_run=True).directories == []


def test_runtime_dirs_of_dead_owners_go_and_unmarked_ones_stay(tmp_path: Path, dead_owner: Owner):
    dead = tmp_path / f"{dead_owner.tag}-gone"
    unmarked = tmp_path / f"{dead_owner.pid}-old-style"  # no start time: not known to be ours
    for directory in (dead, unmarked):
        directory.mkdir()

    cleanup.remove_leftovers(tmp_path)

    assert not dead.exists() and unmarked.exists()


def test_a_namespace_without_an_owner_record_is_never_removed(tmp_path: Path, foreign_namespace: str):
    report = cleanup.remove_leftovers(tmp_path, dry_run=True)
    assert foreign_namespace not in report.namespaces
    cleanup.remove_leftovers(tmp_path)
    assert (NETNS_RUN_DIR / foreign_namespace).exists()


def test_a_namespace_whose_recorded_owner_is_gone_is_removed(
    tmp_path: Path, foreign_namespace: str, dead_owner: Owner,
):
    owners_dir(tmp_path).mkdir()
    (owners_dir(tmp_path) / foreign_namespace).write_text(dead_owner.tag + "\n")
    assert foreign_namespace in cleanup.remove_leftovers(tmp_path, dry_run=True).namespaces
    (owners_dir(tmp_path) / foreign_namespace).write_text(Owner.me().tag + "\n")
    assert foreign_namespace not in cleanup.remove_leftovers(tmp_path, dry_run=True).namespaces


def test_every_namespace_the_plugin_makes_has_an_owner_record(netlab_factory):
    from pytest_netlab.session import runtime_base

    lab = netlab_factory()
    lab.bridge("br1")
    record = owners_dir(runtime_base()) / lab.name
    assert namespace_owner(runtime_base(), lab.name) == Owner.me()
    if os.geteuid() != 0:  # a rootless lab's record names its holder, which holds the namespace
        holder = namespace_holder(runtime_base(), lab.name)
        assert holder is not None and holder.alive() and holder.pid == lab.namespace.path.holder
    lab.close()
    assert not record.exists()


def test_template_build_leftovers_of_dead_runs_are_reaped(tmp_path: Path, dead_owner: Owner):
    store = tmp_path / "templates"
    store.mkdir()
    build, part = store / f"build-{dead_owner.tag}", store / f"abc123.{dead_owner.tag}.part"
    live_build, live_part = store / f"build-{Owner.me().tag}", store / f"abc123.{Owner.me().tag}.part"
    state = store / "abc123.state"
    for directory in (build, live_build):
        directory.mkdir()
        (directory / "console.log").write_text("x")
    for path in (part, live_part, state):
        path.write_bytes(b"x")

    report = cleanup.remove_leftovers(tmp_path / "runtime", template_dir=store)

    assert sorted(report.directories) == [str(build)] and sorted(report.files) == [str(part)]
    assert not build.exists() and not part.exists()
    assert live_build.exists() and live_part.exists() and state.exists()


def test_a_zombie_has_a_start_time_but_does_not_run():
    """owner.py is the one reader of /proc/PID/stat (budget, detached labs, cleanup use it)."""
    from pytest_netlab.budget import process_start
    from pytest_netlab.owner import is_running, process_stat

    proc = subprocess.Popen(["sh", "-c", "exit 0"])
    deadline = time.monotonic() + 10
    while (stat := process_stat(proc.pid)) is not None and stat[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the exit, bounded: not a synchronisation by sleep alone
    assert stat is not None and stat[0] == "Z" and stat[1] == start_ticks(proc.pid)
    assert not is_running(proc.pid) and process_start(proc.pid) is None
    proc.wait()
    assert process_stat(proc.pid) is None and not is_running(proc.pid)
    assert is_running(os.getpid()) and process_start(os.getpid()) == str(Owner.me().ticks)


def test_a_process_s_command_line_is_read_from_proc_once_for_cleanup_and_netlab_list():
    from pytest_netlab.owner import command_line

    proc = subprocess.Popen(["sleep", "60"])
    try:
        # Popen returns once exec has begun; the kernel sets the new argument list a moment
        # later (its cmdline reads empty until then): wait for it
        deadline = time.monotonic() + 10
        while command_line(proc.pid) == "" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert command_line(proc.pid) == "sleep 60"
    finally:
        proc.kill()
        proc.wait()
    assert command_line(proc.pid) == "?"
