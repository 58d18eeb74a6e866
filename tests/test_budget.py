"""The machine-wide guest budget: its bookkeeping with fake processes and a fake clock
(pure logic on files in tmp_path), and one real run of two labs on a budget of one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_netlab import ConfigError
from pytest_netlab.budget import (
    Budget,
    Claim,
    Holding,
    Machine,
    guest_cost,
    parse_guests,
    parse_memory,
)


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
    assert world.record("lab-a") | {"started": "a"} == {
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
