"""Throwaway local users for the root-only tests of what users can do to each other's labs
(tests/test_other_users.py, tests/test_concurrent_users.py); their fixture is
``two_users`` in conftest.py."""

from __future__ import annotations

import contextlib
import pwd
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_netlab.image import default_image
from pytest_netlab.retry import retry_until

PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass(frozen=True)
class User:
    """A throwaway local user; :meth:`run` runs a command as it, with a clean environment."""

    name: str
    uid: int
    home: Path

    def command(self, *argv: str) -> list[str]:
        """*argv* as this user, in an environment of HOME, PATH, USER and LOGNAME only."""
        env = [f"HOME={self.home}", f"PATH={PATH}", f"USER={self.name}", f"LOGNAME={self.name}"]
        return ["runuser", "-u", self.name, "--", "env", "-i", *env, *argv]

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*argv), capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL, cwd=self.home,
        )

    def processes(self) -> set[int]:
        found = subprocess.run(["pgrep", "-u", str(self.uid)], capture_output=True, text=True, check=False)
        return {int(pid) for pid in found.stdout.split()}

    def wait_until_no_processes(self, timeout: float = 30) -> None:
        retry_until(lambda _left: (not self.processes(), f"{self.name}: {self.processes()}"),
                    timeout=timeout, interval=0.1, what=f"every process of {self.name} to end")


def make_user(name: str) -> User:
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name],
                   check=True, capture_output=True, text=True)
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, Path(entry.pw_dir))


def remove_user(name: str) -> None:
    """Kill the user's processes (its only), remove what it left in the temporary
    directory (runtime base, lab directories) and the user with its home."""
    uid = pwd.getpwnam(name).pw_uid
    subprocess.run(["pkill", "-KILL", "-u", name], check=False)
    User(name, uid, Path()).wait_until_no_processes()
    for leftover in Path("/tmp").glob("netlab-*"):
        with contextlib.suppress(OSError):  # another run's entry may go meanwhile
            if stat.S_ISDIR(leftover.lstat().st_mode) and leftover.lstat().st_uid == uid:
                shutil.rmtree(leftover, ignore_errors=True)
    removed = subprocess.run(["userdel", "-r", name], check=False, capture_output=True, text=True)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        raise AssertionError(f"userdel -r {name} left the user: {removed.stderr.strip()}")


def give_image(owner: User) -> None:
    """Copy root's built default guest image into *owner*'s cache (building it first if
    needed), so that *owner*'s lab starts without building one."""
    image_dir = default_image().initrd.parent
    cache = owner.home / ".cache" / "pytest-netlab"
    shutil.copytree(image_dir, cache / "images" / image_dir.name)
    subprocess.run(["chown", "-R", f"{owner.name}:", str(owner.home / ".cache")], check=True)


def skip_unless_runnable_by(user: User) -> None:
    """Skip the test when *user* cannot run this interpreter with pytest_netlab (a venv of
    an interpreter under /root, as pyenv makes them)."""
    usable = user.run(sys.executable, "-c", "import pytest_netlab")
    if usable.returncode != 0:
        pytest.skip(f"{sys.executable} (with pytest_netlab) cannot be run by another user "
                    f"(a venv of an interpreter under /root?): {usable.stderr.strip()[-200:]}")
