"""A machine-wide budget of guests: the memory of running guests and the number of guests
booting at once, shared by every process that makes labs (xdist workers, separate pytest
runs, ``pytest-netlab up``).

A lab takes its part before it launches guests (:meth:`Claim.admit`), gives back the
booting slots once they answer SSH (:meth:`Claim.booted`) and the memory when it closes
(:meth:`Claim.release`). A lab that does not fit waits, in turn, and says so; one that
could never fit is a :class:`ConfigError` at once.

Each lab's part is a record, ``<pid>-<lab>.json``, naming its process (pid and start
time), in the directory every user's runs share (``/var/lib/pytest-netlab/budget``, made by
setup.sh) or else in the runtime dir's ``budget/`` (see :mod:`pytest_netlab.budget_records`).
Records are read and written under one lock; the record of a process that is gone (even
killed with SIGKILL) is ignored and removed, so a crash leaks nothing.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from .budget_records import (
    QEMU_OVERHEAD_MIB,
    Holding,
    budget_place,
    guest_cost,
    load_record,
    locked,
    process_uid,
    remove,
    remove_leftovers,
    write_record,
)
from .constants import GUEST_MEMORY_RANGE
from .errors import ConfigError
from .owner import process_stat

__all__ = ["QEMU_OVERHEAD_MIB", "Budget", "Claim", "Holding", "Machine", "budget_place", "guest_cost"]

log = logging.getLogger(__name__)

BOOTING_PER_CPU = 4
RESERVE_FRACTION = 0.1  # of the machine's memory, never given to guests (at most RESERVE_MAX_MIB)
RESERVE_MAX_MIB = 2048
POLL_SECONDS = 0.25
REPORT_EVERY = 30.0  # seconds between two "waiting" lines of one lab
_SIZE = re.compile(r"^\s*(\d+)\s*([MG]i?B?)?\s*$", re.IGNORECASE)


def parse_memory(value: object, what: str = "netlab max memory") -> int:
    """MiB from ``4096``, ``"4096M"`` or ``"4G"``.

    Raises:
        ConfigError: not a size, or below the smallest guest (``GUEST_MEMORY_RANGE``).
    """
    match = _SIZE.match(str(value)) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    mib = int(match[1]) * (1024 if (match[2] or "M")[0].upper() == "G" else 1) if match else 0
    smallest = GUEST_MEMORY_RANGE[0]
    if mib < smallest:
        raise ConfigError(
            f"{what} {value!r} is not accepted: give MiB (e.g. 4096) or G (e.g. 4G), at least {smallest}"
        )
    return mib


def parse_guests(value: object, what: str = "netlab max guests") -> int:
    """A count of guests booting at once.

    Raises:
        ConfigError: not a whole number from 1 to 1024.
    """
    try:
        count = int(str(value))
    except ValueError:
        count = 0
    if not 1 <= count <= 1024:
        raise ConfigError(f"{what} {value!r} is not accepted: give a whole number from 1 to 1024")
    return count


def process_start(pid: int) -> str | None:
    """A process's start time (see :mod:`pytest_netlab.owner`), ``None`` if it is gone or
    a zombie: with the pid it names one process, even after the pid is reused."""
    stat = process_stat(pid)
    return None if stat is None or stat[0] in ("Z", "X") else str(stat[1])


def available_memory() -> int:
    """MemAvailable of /proc/meminfo, in MiB."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def total_memory() -> int:
    with open("/proc/meminfo") as meminfo:
        return int(meminfo.readline().split()[1]) // 1024


@dataclass(frozen=True)
class Limits:
    booting: int  # guests booting at once
    memory: int  # MiB of guests' memory
    source: str  # how they were chosen, for messages


@dataclass(frozen=True)
class Machine:
    """What the budget asks of the machine and the clock; replaced by fakes in tests."""

    cpus: Callable[[], int] = lambda: os.cpu_count() or 1
    available: Callable[[], int] = available_memory
    total: Callable[[], int] = total_memory
    started: Callable[[int], str | None] = process_start
    uid: Callable[[int], int | None] = process_uid  # the user running a process
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


class Budget:
    """The machine-wide budget, seen from one process: its records in *directory*,
    and this process's limits (``None``: sized from the machine)."""

    def __init__(
        self, directory: Path, max_guests: int | None = None, max_memory: int | None = None,
        machine: Machine | None = None, report: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.max_guests = max_guests
        self.max_memory = max_memory
        self.machine = machine or Machine()
        self.report = report or (lambda line: log.warning("%s", line))
        self._ignored: set[tuple[str, str]] = set()

    def _lock(self) -> AbstractContextManager[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        return locked(self.directory, self.report)

    def holdings(self) -> list[Holding]:
        """The live records; those of processes that are gone are removed."""
        with self._lock():
            return self._live()

    def _live(self) -> list[Holding]:
        """The records of live processes (the lock is held). A record that is not one, or
        that names another user's process, is ignored, and said once; the records of
        processes that are gone are removed (those this user may remove)."""
        remove_leftovers(self.directory, self.machine.started)
        live = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                holding, uid = load_record(path)
            except FileNotFoundError:
                continue  # gone meanwhile: a user may remove its own files without the lock
            except (OSError, ValueError) as exc:
                self._ignore(path, str(exc) if isinstance(exc, ValueError) else exc.strerror or "unreadable")
                continue
            if self.machine.started(holding.pid) != holding.started:
                remove(path)
            elif self.machine.uid(holding.pid) != uid:
                self._ignore(path, f"it names process {holding.pid}, not one of its owner, uid {uid}")
            else:
                live.append(holding)
        return live

    def _ignore(self, path: Path, why: str) -> None:
        """Leave out *path*, not a record of the budget: say so once, and remove it if
        this user may (a record of its own torn by a crash, or anything as root)."""
        if (path.name, why) not in self._ignored:
            self._ignored.add((path.name, why))
            log.warning("ignoring %s in the guest budget: %s", path, why)
        remove(path)

    def record_path(self, lab: str, pid: int) -> Path:
        """A lab's record; the pid keeps labs of the same name in two processes apart."""
        return self.directory / Holding(lab, pid, "").name

    def _write(self, holding: Holding) -> None:
        write_record(self.directory, holding)

    def limits(self, holdings: Iterable[Holding] = ()) -> Limits:
        """This process's limits: the options, else from the machine: guests booting
        at once, 4 per CPU; memory, what is available now plus what the live records
        hold (their guests are part of the memory in use), less a reserve."""
        cpus = self.machine.cpus()
        booting = self.max_guests or BOOTING_PER_CPU * cpus
        if self.max_memory is not None:
            memory, source = self.max_memory, "--netlab-max-memory"
        else:
            reserve = min(RESERVE_MAX_MIB, int(self.machine.total() * RESERVE_FRACTION))
            memory = self.machine.available() + sum(h.memory for h in holdings) - reserve
            source = f"free memory less {reserve} MiB"
        guests_source = (
            "--netlab-max-guests" if self.max_guests else f"{BOOTING_PER_CPU} per CPU, {cpus} CPUs"
        )
        return Limits(booting, max(memory, 0), f"{guests_source}; {source}")

    def describe(self) -> str:
        """One line: the limits and what the live records hold."""
        holdings = self.holdings()
        limits = self.limits(holdings)
        running = [h for h in holdings if h.guests]
        return (
            f"{limits.booting} guests booting at once, {limits.memory} MiB of guest memory "
            f"({limits.source}); now {sum(h.guests for h in running)} guests "
            f"({sum(h.memory for h in running)} MiB) in {len(running)} labs, "
            f"{sum(h.booting for h in holdings)} booting, "
            f"{sum(1 for h in holdings if h.waiting_since is not None)} labs waiting"
        )

    def claim(self, lab: str) -> Claim:
        return Claim(self, lab)


class Claim:
    """One lab's part of a :class:`Budget` (or of none: then every method does nothing)."""

    def __init__(self, budget: Budget | None, lab: str) -> None:
        self.budget = budget
        self.lab = lab
        self.pid = os.getpid()
        self.guests = 0
        self.memory = 0
        self.slots = 0  # guests this lab may boot at once, from the last admit() (0: no limit)

    def admit(self, memories: Sequence[int]) -> None:
        """Wait for room for guests of *memories* MiB each, booting together, then
        hold it. Waiting labs go in the order they began to wait.

        Raises:
            ConfigError: the guests could never fit (the limits, or what this
                process's other labs hold).
        """
        if self.budget is None or not memories:
            return
        need = Holding(self.lab, self.pid, "", len(memories), sum(guest_cost(m) for m in memories),
                       len(memories))
        try:
            since = self._wait(need)
        except BaseException:
            # a waiting record left behind would hold up the labs after this one
            with self.budget._lock():
                if self.guests:
                    self._write(0)
                else:
                    self.budget.record_path(self.lab, self.pid).unlink(missing_ok=True)
            raise
        if since is not None:
            waited = self.budget.machine.clock() - since
            self.budget.report(f"netlab: {self.lab} has room after {waited:.1f} s of waiting")

    def _wait(self, need: Holding) -> float | None:
        """Take *need* once it fits; return since when it waited (``None``: at once)."""
        assert self.budget is not None
        budget = self.budget
        since: float | None = None
        last_report = 0.0
        while True:
            with budget._lock():
                holdings = budget._live()
                others = [h for h in holdings if (h.lab, h.pid) != (self.lab, self.pid)]
                limits = budget.limits(holdings)
                self._check_possible(need, others, limits)
                if self._fits(need, others, limits, since):
                    self.guests += need.guests
                    self.memory += need.memory
                    self.slots = min(need.booting, limits.booting)
                    self._write(self.slots)
                    return since
                if since is None:
                    since = budget.machine.clock()
                    self._write(0, since)
            now = budget.machine.clock()
            if now - last_report >= REPORT_EVERY:
                earlier = len(self._earlier(others, since))
                budget.report(_waiting_line(self.lab, need, others, limits, earlier))
                last_report = now
            budget.machine.sleep(POLL_SECONDS)

    def _write(self, booting: int, waiting_since: float | None = None) -> None:
        """Write this lab's record (the budget's lock is held)."""
        assert self.budget is not None
        started = self.budget.machine.started(self.pid) or ""
        self.budget._write(Holding(self.lab, self.pid, started, self.guests, self.memory, booting,
                                   waiting_since))

    def _check_possible(self, need: Holding, others: Sequence[Holding], limits: Limits) -> None:
        ours = sum(h.memory for h in others if h.pid == self.pid)
        if self.memory + need.memory + ours > limits.memory:
            held = f", and this process's other labs hold {ours} MiB" if ours else ""
            raise ConfigError(
                f"lab {self.lab}: {need.guests} guests need {need.memory} MiB (guest memory + "
                f"{QEMU_OVERHEAD_MIB} MiB each), more than the guest budget of {limits.memory} MiB "
                f"({limits.source}){held}: give fewer or smaller guests, or --netlab-max-memory"
            )

    def _fits(self, need: Holding, others: Sequence[Holding], limits: Limits, since: float | None) -> bool:
        if self._earlier(others, since):
            return False
        booting = sum(h.booting for h in others)
        memory = sum(h.memory for h in others)
        # a lab of more guests than the limit boots alone, when nothing else does
        slots = min(need.booting, limits.booting)
        return booting + slots <= limits.booting and memory + self.memory + need.memory <= limits.memory

    def _earlier(self, others: Sequence[Holding], since: float | None) -> list[Holding]:
        """The labs of other processes that began to wait before this one (all that wait,
        if this one does not yet)."""
        return [
            h for h in others if h.waiting_since is not None and h.pid != self.pid
            and (since is None or (h.waiting_since, h.lab) < (since, self.lab))
        ]

    def booted(self) -> None:
        """Give back the booting slots (the guests answer SSH, or failed to)."""
        if self.budget is None or not self.guests:
            return
        with self.budget._lock():
            self._write(0)

    def release(self) -> None:
        """Give back everything (the lab is closed). Idempotent."""
        if self.budget is None or not self.guests:
            return  # nothing held: admit() leaves no record behind when it fails
        with self.budget._lock():
            self.budget.record_path(self.lab, self.pid).unlink(missing_ok=True)
        self.guests = self.memory = 0


def _waiting_line(lab: str, need: Holding, others: Sequence[Holding], limits: Limits, waiting: int) -> str:
    running = [h for h in others if h.guests]
    return (
        f"netlab: {lab} waiting for {need.guests} guests' room ({need.memory} MiB): "
        f"{sum(h.guests for h in running)} running ({sum(h.memory for h in running)} MiB, "
        f"{sum(h.booting for h in others)} booting) in {len(running)} other labs"
        + (f", {waiting} labs waiting before it" if waiting else "")
        + f"; budget {limits.booting} booting, {limits.memory} MiB"
    )

