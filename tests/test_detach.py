"""``pytest-netlab up --detach`` leaves a lab running after the command returns; ``pytest-netlab down``
tears it down."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_netlab.cleanup import remove_leftovers
from pytest_netlab.detached import DetachedLab, detached_labs, find, take_down
from pytest_netlab.errors import ConfigError
from pytest_netlab.netns import namespace_exists
from pytest_netlab.session import runtime_base

ONE_GUEST = """
[bridges.br1]
[nodes.h1]
links = [{ bridge = "br1", address = "10.30.0.1/24" }]
"""


def _netlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_netlab.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=os.environ,
        stdin=subprocess.DEVNULL,
    )


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_detached_lab_outlives_the_command_until_netlab_down(tmp_path):
    topology = tmp_path / "one.toml"
    topology.write_text(ONE_GUEST)
    up = _netlab("up", str(topology), "--detach", "--accel", "tcg", "--workdir", str(tmp_path / "lab"))
    name = re.search(r"^lab (netlab-(\d+)-\d+) is up; files in ", up.stdout, re.M)
    assert up.returncode == 0 and name, up.stdout + up.stderr
    lab, owner = name.group(1), int(name.group(2))
    try:
        assert f"tear it down with: pytest-netlab down {lab}" in up.stdout
        state = DetachedLab.path_of(runtime_base(), lab)
        assert find(runtime_base(), lab).pid == owner and state.exists()
        assert _running(owner) and namespace_exists(lab)
        # the printed command reaches the guest after `pytest-netlab up` has returned
        ssh = re.search(r"^  h1: (ssh .*)$", up.stdout, re.M).group(1)  # type: ignore[union-attr]
        shell = subprocess.run([*shlex.split(ssh), "-o", "BatchMode=yes", "ip -br addr show eth0"],
                               capture_output=True, text=True, timeout=30, check=False)
        assert "10.30.0.1/24" in shell.stdout, shell.stderr
        # a cleanup of dead runs (as every pytest-netlab run starts with) leaves it alone
        assert lab not in remove_leftovers(runtime_base(), dry_run=True).namespaces

        down = _netlab("down", lab)

        assert (down.returncode, down.stdout) == (0, f"lab {lab} is down\n"), down.stderr
        assert not _running(owner)
        assert not namespace_exists(lab)
        assert not state.exists()
        assert "lab " + lab + " is down" in (tmp_path / "lab" / "netlab-up.log").read_text()
    finally:
        if _running(owner):
            _netlab("down", lab)


def test_down_of_an_unknown_lab_names_the_detached_ones(tmp_path, monkeypatch, capsys):
    from pytest_netlab.cli import main

    # a runtime directory of this test's own, with one detached lab (a live owner: this process)
    monkeypatch.setattr("pytest_netlab.session.runtime_base", lambda: tmp_path)
    lab = DetachedLab(f"netlab-{os.getpid()}-99", os.getpid(), "t.toml", str(tmp_path), "")
    lab.save(tmp_path)

    assert main(["down", "netlab-0-1"]) == 1

    assert capsys.readouterr().err == (
        f"netlab: no detached lab 'netlab-0-1': detached labs are {lab.name}\n"
    )
    assert find(tmp_path, lab.name) == lab  # named, not taken down


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    workdir = tmp_path / "lab"
    both = _netlab("up", "x.toml", "--detach", "--hold", "1", "--workdir", str(workdir))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    missing = _netlab("up", str(tmp_path / "missing.toml"), "--detach", "--workdir", str(workdir))
    assert missing.returncode == 1 and "missing.toml" in missing.stderr
    # no work directory (nor its log), no background `pytest-netlab up`, no detached state
    assert not workdir.exists()
    assert not [lab for lab in detached_labs(runtime_base()) if lab.workdir == str(workdir)]
    timeout = _netlab("down", "--all", "--timeout", "0")
    assert timeout.returncode == 1
    assert timeout.stderr == "netlab: pytest-netlab down --timeout 0 is not accepted: give seconds above 0\n"


def test_down_of_a_lab_whose_owner_died_removes_its_state(tmp_path):
    pid = _a_dead_pid()
    lab = DetachedLab(f"netlab-{pid}-1", pid, "t.toml", str(tmp_path), "lab text")
    lab.save(tmp_path)
    assert [found.name for found in detached_labs(tmp_path)] == [lab.name]

    said = take_down(tmp_path, lab, timeout=5)

    assert said == f"lab {lab.name}: its owner (pid {pid}) was gone; removed its leftovers"
    assert detached_labs(tmp_path) == []
    with pytest.raises(ConfigError, match=r"no detached lab 'x': detached labs are none$"):
        find(tmp_path, "x")


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
