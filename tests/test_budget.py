"""The machine-wide guest budget: its bookkeeping with fake processes and a fake clock
(pure logic on files in tmp_path), one real run of two labs on a budget of one, the
directory every user shares and what another user's files there cannot do, and a root
run and an ordinary user's run counting each other's guests."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from pytest_netlab import ConfigError, LabError, budget_records
from pytest_netlab.budget import (
    Budget,
    Claim,
    Holding,
    Machine,
    budget_place,
    guest_cost,
    parse_guests,
    parse_memory,
)
from pytest_netlab.budget_records import Place


class World:
    """Fake processes (pid -> start time), a fake clock, and what happens at each sleep."""

    def __init__(self, tmp_path: Path, max_guests: int | None = 4, max_memory: int | None = 2000) -> None:
        self.processes: dict[int, str] = {101: "a", 102: "b", 103: "c"}
        self.now = 1000.0
        self.sleeps = 0
        self.on_sleep: list = []
        self.lines: list[str] = []
        machine = Machine(
            cpus=lambda: 2, available=lambda: 10000, total=lambda: 16000,
            started=self.processes.get, uid=lambda pid: os.geteuid() if pid in self.processes else None,
            clock=lambda: self.now, sleep=self.sleep,
        )
        self.budget = Budget(tmp_path / "budget", max_guests, max_memory, machine, self.lines.append)

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        for action in self.on_sleep:
            action(self.sleeps)

    def claim(self, lab: str, pid: int) -> Claim:
        claim = self.budget.claim(lab)
        claim.pid = pid
        return claim

    def record(self, lab: str) -> dict:
        (path,) = self.budget.directory.glob(f"*-{lab}.json")
        return json.loads(path.read_text())


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_labs_that_fit_take_their_part_give_back_booting_then_everything(world):
    a, b = world.claim("lab-a", 101), world.claim("lab-b", 102)
    a.admit([128, 128])
    b.admit([256])
    assert world.record("lab-a") == {
        "lab": "lab-a", "pid": 101, "started": "a", "guests": 2, "memory": 2 * guest_cost(128),
        "booting": 2, "waiting_since": None,
    }
    assert world.sleeps == 0
    a.booted()
    assert world.record("lab-a")["booting"] == 0 and world.record("lab-a")["memory"] == 336
    a.release()
    a.release()
    assert [h.lab for h in world.budget.holdings()] == ["lab-b"]


def test_a_lab_waits_for_booting_slots_and_says_so(world):
    a, b = world.claim("lab-a", 101), world.claim("lab-b", 102)
    a.admit([128] * 3)
    world.on_sleep.append(lambda n: a.booted() if n == 8 else None)
    b.admit([128, 128])
    assert world.sleeps == 8
    assert world.lines[0] == (
        "netlab: lab-b waiting for 2 guests' room (336 MiB): 3 running (504 MiB, 3 booting) "
        "in 1 other labs; budget 4 booting, 2000 MiB"
    )
    assert world.lines[-1] == "netlab: lab-b has room after 2.0 s of waiting"
    assert world.record("lab-b")["booting"] == 2 and world.record("lab-b")["waiting_since"] is None


def test_a_lab_waits_for_memory_until_another_closes(world):
    a, b = world.claim("lab-a", 101), world.claim("lab-b", 102)
    a.admit([1024])
    a.booted()
    world.on_sleep.append(lambda n: a.release() if n == 3 else None)
    b.admit([1024])
    assert world.sleeps == 3 and [h.lab for h in world.budget.holdings()] == ["lab-b"]


def test_a_lab_that_could_never_fit_is_refused_at_once_leaving_no_record(world):
    with pytest.raises(ConfigError, match=r"lab-a: 2 guests need 2128 MiB .* more than the guest budget "
                                          r"of 2000 MiB \(--netlab-max-guests; --netlab-max-memory\)"):
        world.claim("lab-a", 101).admit([1024, 1024])
    assert world.sleeps == 0 and world.budget.holdings() == []


def test_memory_held_by_this_process_s_other_labs_cannot_be_waited_for(world):
    world.claim("lab-a", 101).admit([1024])
    with pytest.raises(ConfigError, match="this process's other labs hold 1064 MiB"):
        world.claim("lab-b", 101).admit([1024])
    assert world.sleeps == 0


def test_records_of_dead_or_reused_pids_are_ignored_and_removed(world):
    world.claim("lab-a", 101).admit([1024])
    world.claim("lab-b", 102).admit([512])
    del world.processes[101]  # killed with SIGKILL: its record stays on disk
    world.processes[102] = "b-again"  # the pid now names another process
    (world.budget.directory / "torn.json").write_text("{")  # not a record
    (world.budget.directory / ".101-lab-a.0123.tmp").write_text("{")  # killed before renaming
    assert world.budget.holdings() == []
    assert list(world.budget.directory.iterdir()) == []
    world.claim("lab-c", 103).admit([1800])
    assert world.sleeps == 0


def test_a_lab_larger_than_the_booting_limit_boots_alone(world):
    big, small = world.claim("big", 101), world.claim("small", 102)
    small.admit([128])
    world.on_sleep.append(lambda n: small.booted() if n == 2 else None)
    big.admit([96] * 10)
    assert world.sleeps == 2 and world.record("big")["booting"] == 4
    world.on_sleep.append(lambda n: big.booted() if n == 5 else None)
    world.claim("next", 103).admit([96])
    assert world.sleeps == 5


def test_labs_go_in_the_order_they_began_to_wait(world):
    first = world.claim("first", 101)
    first.admit([128] * 4)  # every booting slot
    world.budget._write(Holding("waiting", 102, "b", waiting_since=world.now - 5))
    # "late" fits once "first" has booted, but "waiting" was there before it
    world.on_sleep.append(lambda n: first.booted() if n == 1 else None)
    world.on_sleep.append(lambda n: world.budget.record_path("waiting", 102).unlink() if n == 4 else None)
    world.claim("late", 103).admit([128])
    assert world.sleeps == 4
    assert world.lines[0].startswith("netlab: late waiting for 1 guests' room (168 MiB): 4 running")
    assert ", 1 labs waiting before it;" in world.lines[0]


def test_the_waiting_line_comes_again_every_30_s_counting_only_the_labs_before_it(world):
    first = world.claim("first", 101)
    first.admit([128] * 4)
    later = Holding("later", 103, "c", waiting_since=world.now + 1)
    world.on_sleep.append(lambda n: world.budget._write(later) if n == 1 else None)
    world.on_sleep.append(lambda n: first.booted() if n == 130 else None)
    world.claim("second", 102).admit([128])
    assert world.sleeps == 130
    waiting = [line for line in world.lines if " waiting for " in line]
    assert len(waiting) == 2  # at once, and 30 s (120 polls) later
    assert all("labs waiting before it" not in line for line in waiting), waiting


def test_an_interrupted_wait_leaves_no_waiting_record(world):
    world.claim("first", 101).admit([128] * 4)

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    world.on_sleep.append(interrupt)
    with pytest.raises(KeyboardInterrupt):
        world.claim("second", 102).admit([128])
    assert [h.lab for h in world.budget.holdings()] == ["first"]


def test_limits_from_the_machine(tmp_path):
    world = World(tmp_path, max_guests=None, max_memory=None)
    world.claim("lab-a", 101).admit([128])
    limits = world.budget.limits(world.budget.holdings())
    # 4 per CPU; available 10000 + 168 held by lab-a's guests - a reserve of 10% of 16000
    assert (limits.booting, limits.memory) == (8, 10000 + 168 - 1600)
    assert world.budget.describe().startswith(
        "8 guests booting at once, 8568 MiB of guest memory (4 per CPU, 2 CPUs; free memory less "
        "1600 MiB); now 1 guests (168 MiB) in 1 labs, 1 booting, 0 labs waiting"
    )


@pytest.mark.parametrize(("value", "mib"), [("4096", 4096), (512, 512), ("4G", 4096), ("2 GiB", 2048),
                                            ("300M", 300)])
def test_memory_sizes(value, mib):
    assert parse_memory(value) == mib


@pytest.mark.parametrize("value", ["lots", "64", "-1", "1T", True])
def test_bad_memory_sizes_name_the_value(value):
    with pytest.raises(ConfigError, match=f"netlab max memory {value!r} is not accepted: give MiB"):
        parse_memory(value)


@pytest.mark.parametrize("value", ["0", "many", "2000"])
def test_bad_guest_counts_name_the_value(value):
    assert parse_guests("3") == 3
    with pytest.raises(ConfigError, match=f"netlab max guests {value!r} is not accepted: give a whole"):
        parse_guests(value)


def never_wait(seconds: float) -> None:
    raise AssertionError("would wait")


def test_a_holder_killed_with_sigkill_leaks_nothing(tmp_path):
    directory = tmp_path / "budget"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from pytest_netlab.budget import Budget\n"
         f"Budget(Path({str(directory)!r}), max_memory=1000).claim('netlab-holder').admit([512])\n"
         "print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        budget = Budget(directory, max_memory=1000, machine=Machine(sleep=never_wait))
        assert [(h.lab, h.pid, h.memory) for h in budget.holdings()] == [("netlab-holder", holder.pid, 552)]
        with pytest.raises(AssertionError, match="would wait"):
            budget.claim("waits").admit([900])
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert budget.holdings() == []
    budget.claim("after").admit([900])  # all of it: nothing was leaked
    assert [h.lab for h in budget.holdings()] == ["after"]


def test_two_labs_on_a_budget_of_one_booting_guest_both_come_up_one_after_the_other(
    netlab_factory, tmp_path
):
    lines: list[str] = []
    budget = Budget(tmp_path / "budget", max_guests=1, report=lines.append)
    ready: dict[str, float] = {}
    errors: list[BaseException] = []
    together = threading.Barrier(2)

    def run(name: str) -> None:
        try:
            lab = netlab_factory()
            lab.settings = replace(lab.settings, budget=budget)
            lab.claim = Claim(budget, lab.name)
            vm = lab.vm(name)
            together.wait(30)  # both labs ask for room at the same moment
            lab.start()
            ready[name] = budget.machine.clock()
            assert vm.ssh("echo up").stdout == "up\n"
            assert [h.guests for h in budget.holdings() if h.lab == lab.name] == [1]
        except BaseException as exc:  # noqa: BLE001 - given to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("g1", "g2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(ready) == 2
    assert any(" waiting for 1 guests' room " in line and "1 booting" in line for line in lines), lines
    assert any(" has room after " in line for line in lines), lines


# --- one budget for every user: the shared directory, its lock, other users' files ---

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="makes files of root and of other users")


def shared_dir(parent: Path, mode: int = 0o1777) -> Path:
    """A directory like setup.sh's ``/var/lib/pytest-netlab/budget``, in *parent*."""
    directory = parent / "shared" / "budget"
    directory.mkdir(parents=True)
    os.chmod(directory.parent, 0o755)
    os.chmod(directory, mode)
    return directory


@needs_root
def test_the_shared_directory_is_used_when_it_is_root_s_and_sticky(tmp_path):
    shared = shared_dir(tmp_path)
    assert budget_place(tmp_path / "run", shared) == Place(shared, True)
    assert "machine-wide: records in " in budget_place(tmp_path / "run", shared).describe()


def _not_sticky(shared: Path) -> None:
    os.chmod(shared, 0o777)


def _a_symlink(shared: Path) -> None:
    shared.rmdir()
    shared.symlink_to(shared.parent)


def _another_user_s(shared: Path) -> None:
    os.chown(shared, 65534, 65534)


def _under_a_writable_parent(shared: Path) -> None:
    os.chmod(shared.parent, 0o777)


def _a_file(shared: Path) -> None:
    shared.rmdir()
    shared.write_text("")


@needs_root
@pytest.mark.parametrize(("spoil", "why"), [
    (Path.rmdir, "budget is missing"),
    (_not_sticky, "budget is not sticky (mode 0777, not 1777)"),
    (_a_symlink, "budget is a symlink"),
    (_a_file, "budget is not a directory"),
    (_another_user_s, "budget is owned by uid 65534, not by root"),
    (_under_a_writable_parent, "shared is writable by group and others"),
])
def test_an_untrusted_or_missing_shared_directory_leaves_each_user_its_own_budget(tmp_path, spoil, why):
    shared = shared_dir(tmp_path)
    spoil(shared)
    place = budget_place(tmp_path / "run", shared)
    assert (place.directory, place.shared) == (tmp_path / "run" / "budget", False)
    assert place.why.endswith(why), place.why
    assert place.describe().startswith(f"per user: records in {tmp_path}/run/budget, so other users' runs")


def test_the_lock_is_a_flock_on_the_directory_and_its_holder_is_named(tmp_path, monkeypatch):
    directory = tmp_path / "budget"
    directory.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         f"fd = os.open({str(directory)!r}, os.O_RDONLY | os.O_DIRECTORY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    monkeypatch.setattr(budget_records, "LOCK_REPORT_SECONDS", 0.1)
    monkeypatch.setattr(budget_records, "LOCK_TIMEOUT", 0.5)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        budget = Budget(directory, max_memory=1000, report=lines.append)
        with pytest.raises(LabError, match=rf"lock on {directory} is held by process {holder.pid} "
                                           rf"\(uid {os.geteuid()}\) for \d s: gave up waiting for it"):
            budget.holdings()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    assert lines == [f"netlab: waiting: the guest budget's lock on {directory} is held by process "
                     f"{holder.pid} (uid {os.geteuid()})"]
    assert budget.holdings() == [] and list(directory.iterdir()) == []  # no lock file


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _symlink_to_a_record(path: Path) -> None:
    real = path.with_name("elsewhere")
    real.write_text(json.dumps(asdict(Holding("lab-x", 101, "a", 1, 168, 1))))
    path.with_name("101-lab-x.json").symlink_to(real)


def _hard_link(path: Path) -> None:
    path.write_text(json.dumps(asdict(Holding("lab-x", 101, "a", 1, 168, 1))))
    os.link(path, path.with_name("elsewhere"))


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


def _record(**fields: object) -> Callable[[Path], None]:
    good = asdict(Holding("lab-x", 101, "a", 1, 168, 1))
    return _text(json.dumps({**good, **fields}))


@pytest.mark.parametrize(("plant", "why"), [
    (_text("{"), "not JSON"),
    (_text("\xff"), "not JSON"),
    (_text(" " * 5000), "larger than 4096 bytes"),
    (_fifo, "not a regular file of one link"),
    (_hard_link, "not a regular file of one link"),
    (_symlink_to_a_record, "not a regular file of one link"),
    (_text("[1, 2]"), "not an object of the fields booting, guests, lab, memory, pid, started"),
    (_record(extra=1), "not an object of the fields"),
    (_record(pid=True), "pid is not a whole number from 1 to 4194304"),
    (_record(pid=0), "pid is not a whole number from 1"),
    (_record(memory=-5), "memory is not a whole number from 0 to 65576"),
    (_record(guests=10**9), "guests is not a whole number from 0 to 1024"),
    (_record(booting=2), "booting is not a whole number from 0 to 1"),
    (_record(waiting_since=float("nan")), "waiting_since is neither null nor a time"),
    (_record(waiting_since="soon"), "waiting_since is neither null nor a time"),
    (_record(lab="a\nb"), "lab is not a printable name"),
    (_record(started=["a"]), "started is not a printable string"),
    (_record(lab="lab-y"), "its name is not '101-lab-y.json', as its content says"),
])
def test_what_is_not_a_record_is_ignored_said_once_and_removed_where_allowed(world, caplog, plant, why):
    world.claim("lab-a", 102).admit([128])
    plant(world.budget.directory / "101-lab-x.json")
    assert [h.lab for h in world.budget.holdings()] == ["lab-a"]
    assert [h.lab for h in world.budget.holdings()] == ["lab-a"]
    said = [r.getMessage() for r in caplog.records if "ignoring " in r.getMessage()]
    assert len(said) == 1 and f"in the guest budget: {why}" in said[0], said
    assert "101-lab-x.json" in said[0] and "lab-x" not in said[0].split(": ", 1)[1]
    assert {p.name for p in world.budget.directory.iterdir()} <= {"102-lab-a.json", "elsewhere"}
    world.claim("lab-b", 103).admit([1800 - 168])  # the planted record held nothing


def test_a_record_naming_another_user_s_process_is_ignored(world, caplog):
    world.budget.directory.mkdir()
    world.budget._write(Holding("lab-x", 101, "a", 8, 8 * 1064, 8))
    world.budget.machine = replace(world.budget.machine, uid=lambda pid: 4242)
    assert world.budget.holdings() == []
    assert any(r.getMessage().endswith(f"it names process 101, not one of its owner, uid {os.geteuid()}")
               for r in caplog.records)


def test_records_are_readable_by_every_user_whatever_the_umask(world):
    old = os.umask(0o077)
    try:
        world.claim("lab-a", 101).admit([128])
    finally:
        os.umask(old)
    (record,) = world.budget.directory.iterdir()
    assert stat.S_IMODE(record.stat().st_mode) == 0o644


@pytest.fixture
def ordinary_user() -> Iterator[str]:
    """A throwaway local user, without a home; removed afterwards."""
    name = f"nltest-budget-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        usable = subprocess.run(["runuser", "-u", name, "--", sys.executable, "-c", "import pytest_netlab"],
                                capture_output=True, text=True, check=False, cwd="/")
        if usable.returncode != 0:
            pytest.skip(f"{sys.executable} (with pytest_netlab) cannot be run by another user "
                        f"(a venv of an interpreter under /root?): {usable.stderr.strip()[-200:]}")
        yield name
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory of root's that every user may enter (pytest's tmp_path is private)."""
    top = Path(tempfile.mkdtemp(dir="/tmp", prefix="netlab-budget-test-"))
    os.chmod(top, 0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top)


AS_THE_USER = """
import json, os, sys
from pathlib import Path
from pytest_netlab.budget import Budget, budget_place
from pytest_netlab.budget_records import Holding, write_record
from pytest_netlab.errors import LabError

place = budget_place(Path("/nonexistent"), Path(sys.argv[1]))
budget = Budget(place.directory, max_memory=1000)
seen = [(h.lab, h.memory) for h in budget.holdings()]
budget.claim("netlab-user").admit([512])
refused = []
for attempt in (lambda: os.unlink(place.directory / sys.argv[2]), lambda: os.chmod(place.directory, 0o700)):
    try:
        attempt()
    except PermissionError:
        refused.append(True)
try:
    write_record(place.directory, Holding("squatted", 1, ""))
except LabError as exc:
    refused.append(str(exc))
said = {"shared": place.shared, "why": place.why, "seen": seen, "pid": os.getpid(), "refused": refused}
print(json.dumps(said), flush=True)
sys.stdin.read()
"""


@needs_root
def test_a_root_run_and_an_ordinary_user_s_run_count_each_other_s_guests(ordinary_user, open_tmp):
    """Root holds a guest; the user's run (its own process, uid and files) sees it, takes
    room beside it, cannot remove root's record nor lock the others out; root counts the
    user's guest and would wait for it, and removes its record once the user's run is gone."""
    shared = shared_dir(open_tmp)
    lines: list[str] = []
    root = Budget(budget_place(Path("/nonexistent"), shared).directory, max_guests=4, max_memory=1000,
                  machine=Machine(sleep=never_wait), report=lines.append)
    mine = root.claim("netlab-root")
    mine.admit([128])
    (shared / "1-squatted.json").write_text("")  # root's: the user may not replace it
    user = subprocess.Popen(
        ["runuser", "-u", ordinary_user, "--", "env", "-i", "PATH=/usr/bin:/bin",
         sys.executable, "-c", AS_THE_USER, str(shared), root.record_path("netlab-root", os.getpid()).name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
    )
    try:
        assert user.stdout is not None
        said = json.loads(user.stdout.readline())
        assert said["shared"], said["why"]
        assert said["seen"] == [["netlab-root", 168]]
        assert said["refused"][:2] == [True, True]
        assert said["refused"][2].endswith("1-squatted.json: a file of uid 0 is in its place (the directory "
                                           "is sticky: only its owner or root may remove it)")
        assert [(h.lab, h.pid, h.memory) for h in root.holdings()] == [
            ("netlab-root", os.getpid(), 168), ("netlab-user", said["pid"], 552)]
        record = shared / f"{said['pid']}-netlab-user.json"
        assert record.stat().st_uid == pwd.getpwnam(ordinary_user).pw_uid
        with pytest.raises(AssertionError, match="would wait"):
            root.claim("netlab-waits").admit([256])
        assert lines == ["netlab: netlab-waits waiting for 1 guests' room (296 MiB): 2 running (720 MiB, "
                         "2 booting) in 2 other labs; budget 4 booting, 1000 MiB"]
    finally:
        assert user.stdin is not None
        user.stdin.close()  # the user's run ends without giving its part back
        user.wait(30)
        mine.release()
    assert root.holdings() == [] and list(shared.iterdir()) == []  # root removed the junk too


@needs_root
def test_a_session_s_budget_is_the_shared_one_where_set_up_made_it(tmp_path, monkeypatch):
    from pytest_netlab.session import NetlabSession, runtime_base

    monkeypatch.setattr(budget_records, "SHARED_BUDGET_DIR", tmp_path / "shared" / "budget")
    assert NetlabSession().budget.directory == runtime_base() / "budget"
    shared = shared_dir(tmp_path)
    assert NetlabSession().budget.directory == shared
