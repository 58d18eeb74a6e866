"""Root and rootless runs, and two users' runs, at the same time on one machine, do not
collide (issue 14, docs/security.md "Root and rootless").

Root starts three pytest runs of one small test at once: one as root and one as each of
two throwaway users (rootless). Each builds the same lab, bridge ``br1`` with guests
``h1`` and ``h2`` on TAPs ``vport11`` and ``vport12``, addresses 10.0.0.1/24 and
10.0.0.2/24, pings across it, says so in its ``up`` file and holds its lab until the outer
test, having seen all three up and checked that they all run, releases them. All three
pass, and none leaves a process, a namespace or a runtime directory behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from local_users import PATH, User, give_image, skip_unless_runnable_by

from pytest_netlab.constants import NETNS_RUN_DIR
from pytest_netlab.retry import retry_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="makes two throwaway local users (useradd, runuser): needs root"
)

HOLD_TIMEOUT = 300  # seconds an inner run waits for the others' labs, then for the release
_INNER_TEST = f"""
import getpass, json, os, time
from pathlib import Path

HERE = Path(__file__).parent

def _wait_for(what, done):
    deadline = time.monotonic() + {HOLD_TIMEOUT}
    while not done():
        assert time.monotonic() < deadline, f"{{what}} within {HOLD_TIMEOUT} s"
        time.sleep(0.1)

def test_the_common_lab_while_the_others_run(netlab):
    br1 = netlab.bridge("br1")
    h1 = netlab.vm("h1", nics=[br1])
    h2 = netlab.vm("h2", nics=[br1])
    netlab.start()
    assert (h1.taps, h2.taps) == (["vport11"], ["vport12"])
    on_br1 = json.loads(netlab.run("ip -j link show master br1").stdout)
    assert sorted(link["ifname"] for link in on_br1) == ["vport11", "vport12"]
    h1.ssh("ip addr add 10.0.0.1/24 dev eth0 && ip link set eth0 up")
    h2.ssh("ip addr add 10.0.0.2/24 dev eth0 && ip link set eth0 up")
    assert h1.ping("10.0.0.2")
    up = dict(lab=netlab.name, pid=os.getpid(), runtime=str(netlab.key.private_path.parent))
    (HERE / "up" / getpass.getuser()).write_text(json.dumps(up))
    _wait_for("all three labs up", lambda: all(f.read_text() for f in (HERE / "up").iterdir()))
    _wait_for("the release", (HERE / "release").exists)
    assert h2.ping("10.0.0.1")
"""


@dataclass
class InnerRun:
    """One pytest run of the inner test, as root or as a user; :meth:`up` is what its
    test wrote once its lab was up."""

    who: str
    process: subprocess.Popen[str]
    up_file: Path
    output: str | None = None

    def up(self) -> dict[str, str | int]:
        text = self.up_file.read_text()
        return json.loads(text) if text else {}

    def finish(self) -> str:
        """Its output, once it has ended (killed if it outlives the inner test's timeouts)."""
        if self.output is None:
            try:
                self.output, _ = self.process.communicate(timeout=HOLD_TIMEOUT + 300)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
        return self.output

    def passed(self) -> bool:
        return self.process.returncode == 0 and "1 passed" in self.finish()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """The inner test in a directory every user can read, and its ``up/`` files, one per
    run, each writable by its run only."""
    directory = Path(tempfile.mkdtemp(prefix="concurrent-labs-"))
    try:
        directory.chmod(0o755)
        (directory / "test_common_lab.py").write_text(_INNER_TEST)
        (directory / "test_common_lab.py").chmod(0o644)
        (directory / "up").mkdir(mode=0o755)
        yield directory
    finally:
        shutil.rmtree(directory)


def _start(directory: Path, who: str, argv: list[str], uid: int, home: Path) -> InnerRun:
    """Run the inner test with *argv* before it (as *who*), its temporary files in *home*."""
    up_file = directory / "up" / who
    up_file.touch(mode=0o644)
    os.chown(up_file, uid, -1)
    pytest_argv = [sys.executable, "-m", "pytest", "-p", "netlab", "--netlab-accel=tcg", "-q",
                   "-p", "no:cacheprovider", f"--basetemp={home / 'pytest-tmp'}",
                   str(directory / "test_common_lab.py")]
    process = subprocess.Popen(
        [*argv, *pytest_argv], cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    return InnerRun(who, process, up_file)


def _start_all(directory: Path, users: tuple[User, User], root_home: Path) -> list[InnerRun]:
    # root's run has a clean environment too, but for the machine's cache (see conftest.py)
    root_env = ["env", "-i", "HOME=/root", f"PATH={PATH}",
                f"NETLAB_CACHE_DIR={os.environ['NETLAB_CACHE_DIR']}"]
    runs = [_start(directory, "root", root_env, 0, root_home)]
    runs += [_start(directory, user.name, user.command(), user.uid, user.home) for user in users]
    return runs


def _check_all_up_at_once(runs: list[InnerRun], users: tuple[User, User]) -> None:
    """Wait until all three labs are up (each run holds its lab until the release), then
    see each one running: root's namespace bound under /run/netns, and two QEMUs of each
    user. A run that ends before then fails the test with its output."""
    def all_up(_left: float) -> tuple[bool, str]:
        ended = [run for run in runs if run.process.poll() is not None]
        assert not ended, [f"{run.who} ended early:\n{run.finish()}" for run in ended]
        return all(run.up() for run in runs), str({run.who: run.up() for run in runs})

    retry_until(all_up, timeout=HOLD_TIMEOUT, interval=0.2, what="the three labs to be up")
    assert (NETNS_RUN_DIR / str(runs[0].up()["lab"])).exists()
    for user in users:
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in user.processes()]
        assert sum(b"qemu-system" in line for line in commands) == 2, (user.name, commands)
    names = [run.up()["lab"] for run in runs]
    assert len(set(names)) == 3, names


def _entries_of(base: Path, lab: str, pid: int) -> list[Path]:
    """What *base* (a runtime base) and its subdirectories hold of run *pid* and its lab:
    a name that starts with ``<pid>-`` (its runtime directory, its records) or holds the
    lab's name (an owner record)."""
    found = []
    for directory in (base, *(entry for entry in base.iterdir() if entry.is_dir())):
        with contextlib.suppress(OSError):  # another run's directory may go meanwhile
            found += [entry for entry in directory.iterdir()
                      if entry.name.startswith(f"{pid}-") or lab in entry.name]
    return found


def _check_nothing_is_left(runs: list[InnerRun], users: tuple[User, User]) -> None:
    """No process of either user, no namespace of root's lab, and in each run's runtime
    base nothing of the run: no runtime directory, no owner or budget record."""
    for user in users:
        user.wait_until_no_processes()
    root_lab = str(runs[0].up()["lab"])
    assert not (NETNS_RUN_DIR / root_lab).exists(), root_lab
    for run in runs:
        up = run.up()
        runtime = Path(str(up["runtime"]))
        assert not runtime.exists(), run.who
        left = _entries_of(runtime.parent, str(up["lab"]), int(up["pid"]))
        assert not left, (run.who, left)


def test_root_and_two_users_run_the_same_lab_at_once(
    two_users: tuple[User, User], shared_dir: Path, tmp_path: Path,
) -> None:
    for user in two_users:
        skip_unless_runnable_by(user)
        give_image(user)
    runs = _start_all(shared_dir, two_users, tmp_path)
    try:
        _check_all_up_at_once(runs, two_users)
    finally:
        (shared_dir / "release").touch()
        for run in runs:
            run.finish()
    failed = [f"{run.who}:\n{run.finish()}" for run in runs if not run.passed()]
    assert not failed, "\n".join(failed)
    _check_nothing_is_left(runs, two_users)
