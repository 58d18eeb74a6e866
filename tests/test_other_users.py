"""Another local user cannot log into a lab's guests, read its keys or stop it (issue 14,
docs/security.md "What another local user can and cannot do").

Root makes two throwaway users; A brings a detached lab up as an ordinary user (rootless)
and B, with a key of its own, attacks it: reads A's key and SSH files, logs into the
guest's forwarded port, takes the lab down, kills its processes, runs a cleanup. A's lab
outlives all of it, and A's own ``pytest-netlab down`` leaves nothing of A running.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from local_users import User, give_image, skip_unless_runnable_by

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="makes two throwaway local users (useradd, runuser): needs root"
)

ONE_GUEST = """
[bridges.br1]
[nodes.h1]
links = [{ bridge = "br1", address = "10.31.0.1/24" }]
"""


def _netlab_command() -> list[str]:
    script = Path(sys.executable).with_name("pytest-netlab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pytest_netlab"]


@dataclass(frozen=True)
class PrintedLab:
    """What ``pytest-netlab up --detach`` printed about A's lab."""

    name: str
    workdir: Path
    key: Path
    port: int

    @classmethod
    def parse(cls, text: str) -> PrintedLab:
        up = re.search(r"^lab (netlab-\d+-\d+) is up; files in (\S+)$", text, re.M)
        ssh = re.search(r"^  h1: ssh -i (\S+) -p (\d+) ", text, re.M)
        assert up and ssh, text
        return cls(up.group(1), Path(up.group(2)), Path(ssh.group(1)), int(ssh.group(2)))


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def _owner_logs_in(owner: User, lab: PrintedLab) -> subprocess.CompletedProcess[str]:
    return owner.run("ssh", "-F", str(lab.workdir / "ssh_config"), "-o", "BatchMode=yes", "h1",
                     "ip -br addr show eth0", timeout=60)


def test_another_user_cannot_log_in_read_the_keys_or_stop_the_lab(
    two_users: tuple[User, User],
) -> None:
    owner, other = two_users
    netlab = _netlab_command()
    skip_unless_runnable_by(owner)
    give_image(owner)
    topology = owner.home / "one.toml"
    topology.write_text(ONE_GUEST)
    os.chown(topology, owner.uid, -1)

    up = owner.run(*netlab, "up", "--detach", "--accel", "tcg", str(topology), timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    lab = PrintedLab.parse(up.stdout)
    assert "10.31.0.1/24" in _owner_logs_in(owner, lab).stdout
    running = owner.processes()

    _check_files_are_private(owner, other, lab)
    _check_login_is_refused(other, lab)
    _check_lab_cannot_be_stopped(owner, other, lab, netlab, running)

    # the owner's own down takes it all away
    down = owner.run(*netlab, "down", lab.name, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    owner.wait_until_no_processes()
    assert not lab.key.exists()


def _check_files_are_private(owner: User, other: User, lab: PrintedLab) -> None:
    """Key files 0600 in a 0700 directory, the lab's files in a 0700 directory: B reads none."""
    for directory in (lab.key.parent, lab.workdir):
        assert (directory.stat().st_uid, _mode(directory)) == (owner.uid, "0o700"), directory
    assert (lab.key.stat().st_uid, _mode(lab.key)) == (owner.uid, "0o600")
    lab_files = [lab.key, lab.key.with_name("id_ed25519.pub"), *(
        lab.workdir / name for name in ("ssh_config", "known_hosts", "inventory.yml"))]
    for path in lab_files:
        assert path.is_file(), path
        read = other.run("cat", str(path))
        assert read.returncode != 0 and "Permission denied" in read.stderr, (path, read)
    listing = other.run("ls", str(lab.key.parent), str(lab.workdir))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing


def _check_login_is_refused(other: User, lab: PrintedLab) -> None:
    """B's own key is refused on the guest's forwarded port; A's key cannot be loaded."""
    key = other.home / "id_ed25519"
    made = other.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    assert made.returncode == 0, made.stderr
    options = ["-p", str(lab.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"]
    for identity in (key, lab.key):
        login = other.run("ssh", *options, "-i", str(identity), "root@127.0.0.1", "true")
        assert login.returncode == 255, (identity, login)
        assert "Permission denied (publickey" in login.stderr, (identity, login.stderr)


def _check_lab_cannot_be_stopped(
    owner: User, other: User, lab: PrintedLab, netlab: list[str], running: set[int],
) -> None:
    """B's down, kill and cleanup leave every process of A's lab running, and it answers."""
    commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in running}
    assert any(b"qemu-system" in line for line in commands.values()), commands
    assert any(b"nsholder" in line or b"-I\0-S\0-c" in line for line in commands.values()), commands

    down = other.run(*netlab, "down", lab.name)
    assert down.returncode == 1 and f"no detached lab '{lab.name}'" in down.stderr, down
    down_all = other.run(*netlab, "down", "--all")
    assert lab.name not in down_all.stdout + down_all.stderr, down_all
    for pid in sorted(running):
        kill = other.run("kill", "-KILL", str(pid))
        assert kill.returncode != 0 and "Operation not permitted" in kill.stderr, (pid, commands[pid], kill)
    cleanup = other.run(*netlab, "cleanup")
    assert cleanup.returncode == 0, cleanup

    assert owner.processes() == running
    assert "10.31.0.1/24" in _owner_logs_in(owner, lab).stdout
