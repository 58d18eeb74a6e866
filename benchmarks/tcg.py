"""What a resumed guest's QEMU spends under TCG: the size of its translation buffer
against memory and time, and what its unique memory is made of.

Run as root from a checkout (see README.md, "Benchmark")::

    sudo .venv/bin/python benchmarks/tcg.py --rounds 5 --tb-sizes default,64,32,24,16,8
    sudo .venv/bin/python benchmarks/tcg.py --anatomy

Each round brings up, once per buffer size and in alternating order (the host is shared),
one guest and then three, resumed copy-on-write as in ``bench.py``'s rows, and records
``start()`` to SSH ready, QEMU's CPU time until then, the USS and anonymous memory of each
of the three, and the time of a short workload in one more guest (its first run
translates new code). It prints each row's median and spread (min-max) per size, and the
load average. ``--anatomy`` prints one idle resumed guest's unique memory by the kind of
mapping it is in, and QEMU's ``info jit``.

The plugin has no option for the buffer size (docs/benchmark.md, "Copy-on-write guest
memory", says why): this script adds ``tb-size=N`` to QEMU's ``-accel`` itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from bench import Bench, declare_one, declare_three, phases, unique_mib  # noqa: E402

from pytest_netlab.qemu import QemuMachine  # noqa: E402
from pytest_netlab.session import NetlabSession  # noqa: E402

# new programs, so new code to translate: what a test's first commands do
WORKLOAD = ("ip -d addr >/dev/null; ip route >/dev/null; ping -c 2 -i 0.2 127.0.0.1 >/dev/null; "
            "ls -l /usr/bin /sbin >/dev/null; cat /proc/meminfo >/dev/null; ps >/dev/null")
ROWS = [
    "snapshot/1 guest/SSH up",
    "snapshot/1 guest/console READY",
    "snapshot/1 guest/QEMU CPU time to SSH up, per guest",
    "snapshot/3 guests/SSH up",
    "snapshot/3 guests/QEMU CPU time to SSH up, per guest",
    "memory/snapshot/QEMU USS per guest, 3 guests (MiB)",
    "memory/snapshot/QEMU anonymous per guest, 3 guests (MiB)",
    "workload, first run",
    "workload, three more runs",
]


@contextmanager
def tb_size(size: str) -> Iterator[None]:
    """QEMUs launched inside get ``tb-size=<size>`` (MiB) in ``-accel``; ``default``: none."""
    original = QemuMachine.build_argv

    def build_argv(self: QemuMachine, *args: Any, **kwargs: Any) -> list[str]:
        argv = original(self, *args, **kwargs)
        if size != "default":
            at = argv.index("-accel") + 1
            argv[at] += f",tb-size={size}"
        return argv

    QemuMachine.build_argv = build_argv  # type: ignore[method-assign]
    try:
        yield
    finally:
        QemuMachine.build_argv = original  # type: ignore[method-assign]


def workload(bench: Bench) -> None:
    lab = bench.new_lab("snapshot")
    try:
        vm = declare_one(lab)[0]
        lab.start()
        started = time.monotonic()
        vm.ssh(WORKLOAD)
        bench.add("workload, first run", time.monotonic() - started)
        started = time.monotonic()
        for _ in range(3):
            vm.ssh(WORKLOAD)
        bench.add("workload, three more runs", time.monotonic() - started)
    finally:
        lab.close()


def compare(session: NetlabSession, sizes: list[str], rounds: int) -> None:
    benches = {size: Bench(session, False) for size in sizes}
    warm_up = Bench(session, False)
    loads = [os.getloadavg()[0]]
    for size in sizes:  # untimed: templates made, caches warm
        with tb_size(size):
            phases(warm_up, "snapshot", declare_three, "warm-up")
    labs = warm_up.lab_count  # one numbering of the labs' directories for all
    for number in range(rounds):
        for size in sizes if number % 2 == 0 else sizes[::-1]:
            bench = benches[size]
            bench.lab_count = labs
            with tb_size(size):
                phases(bench, "snapshot", declare_one, "1 guest")
                phases(bench, "snapshot", declare_three, "3 guests")
                workload(bench)
            labs = bench.lab_count
        loads.append(os.getloadavg()[0])
        print(f"round {number + 1} of {rounds}, load average {loads[-1]:.1f}", file=sys.stderr)
    print(f"{'tb-size (MiB)':<56}" + "".join(f"{size:>22}" for size in sizes))
    for row in ROWS:
        cells = []
        for size in sizes:
            values = benches[size].samples.get(row, [])
            cells.append(f"{statistics.median(values):8.3f} ({min(values):.2f}-{max(values):.2f})"
                         if values else "-")
        print(f"{row:<56}" + "".join(f"{cell:>22}" for cell in cells))
    print(f"load average (1 min) over the rounds: {min(loads):.1f} to {max(loads):.1f}; "
          f"CPUs: {os.cpu_count()}")


def smaps_unique(pid: int | None) -> dict[str, float]:
    """*pid*'s unique memory (private clean + dirty, MiB) by the kind of mapping it is in."""
    kinds: dict[str, float] = {}
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's first line: range perms offset dev inode [path]
            path = fields[5] if len(fields) > 5 else ""
            if path.endswith(".ram"):
                kind = "guest RAM pages copied on write (template's RAM file)"
            elif path.startswith("/"):
                kind = "QEMU's and its libraries' relocated data (file mappings)"
            elif "x" in fields[1] and not path:
                kind = "TCG translated code (anonymous rwx: the translation buffer)"
            elif path == "[stack]" or not path or path == "[heap]":
                kind = "QEMU's heap, malloc arenas, tables, stacks (anonymous rw)"
            else:
                kind = f"other ({path})"
        elif fields[0] in ("Private_Clean:", "Private_Dirty:"):
            kinds[kind] = kinds.get(kind, 0.0) + int(fields[1]) / 1024
    return kinds


def anatomy(session: NetlabSession) -> None:
    bench = Bench(session, False)
    phases(bench, "snapshot", declare_three, "warm-up")
    lab = bench.new_lab("snapshot")
    try:
        vms = declare_three(lab)
        lab.start()
        for vm in vms:
            vm.ssh("true")
        machine = vms[0].machine
        assert machine is not None
        kinds = smaps_unique(machine.pid)
        print(f"USS of {vms[0].name}'s QEMU, one of 3 idle resumed guests: "
              f"{unique_mib(machine.pid)[1]:.1f} MiB")
        for kind, mib in sorted(kinds.items(), key=lambda item: -item[1]):
            if mib >= 0.05:
                print(f"{mib:8.1f} MiB  {kind}")
        print(machine.qmp("human-monitor-command", **{"command-line": "info jit"}))
    finally:
        lab.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every size (default 5)")
    parser.add_argument("--tb-sizes", default="default,32,16",
                        help="comma-separated sizes in MiB, 'default' for QEMU's (default: default,32,16)")
    parser.add_argument("--anatomy", action="store_true",
                        help="print what one idle resumed guest's unique memory is made of, then stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("qemu").setLevel(logging.CRITICAL)
    session = NetlabSession()
    try:
        if args.anatomy:
            anatomy(session)
        else:
            compare(session, args.tb_sizes.split(","), args.rounds)
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
