"""How fast pytest-netlab builds, uses and tears down labs, against doing it by hand.

Run from a checkout (see README.md, "Benchmark"), as root for every row (the hand-made
scripts use ``ip netns``), or as an ordinary user with ``--skip-handmade`` (rootless labs;
``benchmarks/rootless.py`` sets the two side by side)::

    sudo .venv/bin/python benchmarks/bench.py --runs 5 --json bench.json

It prints a table and writes JSON: the accelerator, per-phase medians and spread (min-max)
of 1 and 3 guests resumed from a snapshot (their RAM mapped copy-on-write from the
template's RAM file, and, to compare, loaded from a whole state file) and cold-booted, the
documents' two- and three-machine scenarios end to end next to the same labs made by hand
with the documents' commands (``handmade_*.sh``), the ``ssh()`` round trip, the overhead of
``ping()``, memory per guest (QEMU's RSS, and its PSS and USS from
``/proc/PID/smaps_rollup``: what sharing the template's RAM saves shows only there), and
the ``-n 2`` / ``-n 0`` ratio of the example suite. The host is shared and noisy: the load
average and the QEMU processes of others are recorded with the numbers.

Timing targets live here, not in the test suite: this script reports, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from pytest_netlab.guest import VM, Router  # noqa: E402
from pytest_netlab.lab import Lab  # noqa: E402
from pytest_netlab.session import NetlabSession  # noqa: E402
from pytest_netlab.templates import TemplateStore  # noqa: E402

# how a snapshot guest gets its RAM: the template's file copy-on-write (the default), or
# loaded from a whole state file (the fallback where QEMU refuses the file, as before)
STATE_FILE = "snapshot-statefile"

Samples = dict[str, list[float]]


class Bench:
    """Collects samples (seconds, or MiB for memory) under names like ``snapshot/1 guest/ssh up``."""

    def __init__(self, session: NetlabSession, verbose: bool) -> None:
        self.session = session
        self.samples: Samples = {}
        self.verbose = verbose
        self.lab_count = 0

    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)
        if self.verbose:
            print(f"  {name}: {value:.3f}", file=sys.stderr)

    def new_lab(self, boot: str) -> Lab:
        """A lab that boots *boot*: ``cold``, ``snapshot`` or :data:`STATE_FILE`."""
        self.lab_count += 1
        lab = self.session.new_lab(self.session.runtime_dir / f"lab{self.lab_count}")
        lab.settings = replace(lab.settings, boot="cold" if boot == "cold" else "snapshot")
        if boot == STATE_FILE and lab.settings.templates is not None:
            store = lab.settings.templates
            lab.settings = replace(lab.settings, templates=TemplateStore(
                store.root, store.qemu_version, memory_files=False))
        return lab


@contextmanager
def timed(bench: Bench, name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    bench.add(name, time.monotonic() - started)


def rss_mib(pid: int | None) -> float:
    """Resident memory of a process (VmRSS of /proc/PID/status) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU time a process used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unique_mib(pid: int | None) -> tuple[float, float, float]:
    """A process's PSS, USS and anonymous memory in MiB, from /proc/PID/smaps_rollup.

    PSS shares each page among the processes that map it. USS (smem's: the pages no other
    process maps) counts the template's page-cache pages a clone alone has touched, which
    stay when it exits; its anonymous memory (its copies of the pages it wrote, QEMU's
    heap and TCG's translated code) is what exits with it.
    """
    kib = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        kib[name.rstrip(":")] = int(value)
    return (kib["Pss"] / 1024, (kib["Private_Clean"] + kib["Private_Dirty"]) / 1024,
            kib["Anonymous"] / 1024)


# -- labs -----------------------------------------------------------------------------
def declare_one(lab: Lab) -> list[VM]:
    br1 = lab.bridge("br1")
    return [lab.vm("h1", nics=[br1])]


def declare_two(lab: Lab) -> list[VM]:
    br1 = lab.bridge("br1")
    return [lab.vm("h1", nics=[br1]), lab.vm("h2", nics=[br1])]


def declare_three(lab: Lab) -> list[VM]:
    br1, br2 = lab.bridge("br1"), lab.bridge("br2")
    return [lab.vm("h1", nics=[br1]), lab.router("rt2", nics=[br1, br2]), lab.vm("h2", nics=[br2])]


def phases(bench: Bench, boot: str, declare: Callable[[Lab], list[VM]], label: str) -> None:
    """One lab: spawn (every QEMU started), resume/kernel up (console READY of the last),
    SSH up (``start()`` returned), first command (one in each guest), teardown."""
    lab = bench.new_lab(boot)
    prefix = f"{boot}/{label}"
    try:
        vms = declare(lab)
        started = time.monotonic()
        lab.start()
        ssh_up = time.monotonic()
        machines = [vm.machine for vm in vms if vm.machine is not None]
        # CPU time is what a busy host does not stretch: QEMU's work until SSH answered
        bench.add(f"{prefix}/QEMU CPU time to SSH up, per guest",
                  statistics.mean(cpu_seconds(m.pid) for m in machines))
        bench.add(f"{prefix}/spawn", max(m.launched_at for m in machines) - started)
        bench.add(f"{prefix}/console READY", max(m.marks.ready_at for m in machines) - started)
        bench.add(f"{prefix}/SSH up", ssh_up - started)
        for vm in vms:
            vm.ssh("true")
        bench.add(f"{prefix}/first command", time.monotonic() - ssh_up)
        for vm in vms:
            assert vm.machine is not None
            bench.add(f"memory/{boot}/QEMU RSS per guest (MiB)", rss_mib(vm.machine.pid))
            pss, uss, anonymous = unique_mib(vm.machine.pid)
            bench.add(f"memory/{boot}/QEMU PSS per guest, {label} (MiB)", pss)
            bench.add(f"memory/{boot}/QEMU USS per guest, {label} (MiB)", uss)
            bench.add(f"memory/{boot}/QEMU anonymous per guest, {label} (MiB)", anonymous)
            bench.add("memory/guest RAM configured (MiB)", vm.spec.memory)
    finally:
        closing = time.monotonic()
        lab.close()
    bench.add(f"{prefix}/teardown", time.monotonic() - closing)


def scenario_two(bench: Bench, boot: str) -> None:
    """The documents' two-machine lab, as ``handmade_two_machines.sh`` does it."""
    started = time.monotonic()
    lab = bench.new_lab(boot)
    try:
        h1, h2 = declare_two(lab)
        lab.start()
        h1.ssh("ip addr add 10.10.10.2/24 dev eth0 && ip link set eth0 up")
        h2.ssh("ip addr add 10.10.10.3/24 dev eth0 && ip link set eth0 up")
        assert h1.ping("10.10.10.3")
        assert h2.ping("10.10.10.2")
        bench.add(f"scenario/two machines, plugin {boot}/first line to last assertion",
                  time.monotonic() - started)
    finally:
        closing = time.monotonic()
        lab.close()
    done = time.monotonic()
    bench.add(f"scenario/two machines, plugin {boot}/teardown", done - closing)
    bench.add(f"scenario/two machines, plugin {boot}/total", done - started)


def scenario_three(bench: Bench, boot: str, extras: bool) -> None:
    """The documents' three-machine lab end to end: addresses, forwarding on, ping both
    ways; with *extras*, then ssh round trips and ping overhead on the same lab."""
    started = time.monotonic()
    scenario = 0.0
    lab = bench.new_lab(boot)
    try:
        h1, rt2, h2 = declare_three(lab)
        lab.start()
        h1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up "
               "&& ip route add default via 10.20.10.2")
        rt2.ssh("ip addr add 10.20.10.2/24 dev eth0 && ip addr add 10.20.20.2/24 dev eth1 "
                "&& ip link set eth0 up && ip link set eth1 up")
        h2.ssh("ip addr add 10.20.20.1/24 dev eth0 && ip link set eth0 up "
               "&& ip route add default via 10.20.20.2")
        assert isinstance(rt2, Router)
        rt2.enable_forwarding()
        assert h1.ping("10.20.20.1")
        assert h2.ping("10.20.10.1")
        scenario = time.monotonic() - started
        bench.add(f"scenario/three machines, plugin {boot}/first line to last assertion", scenario)
        if extras:
            for _ in range(10):
                with timed(bench, "ssh/round trip (true)"):
                    h1.ssh("true")
            for _ in range(5):
                began = time.monotonic()
                reply = h1.ping("10.20.20.1")
                wall = time.monotonic() - began
                assert reply.rtt_avg is not None
                bench.add("ping/ping() wall time", wall)
                bench.add("ping/overhead beyond the reported RTT", wall - reply.rtt_avg / 1000)
    finally:
        closing = time.monotonic()
        lab.close()
    teardown = time.monotonic() - closing
    bench.add(f"scenario/three machines, plugin {boot}/teardown", teardown)
    bench.add(f"scenario/three machines, plugin {boot}/total", scenario + teardown)


# -- by hand --------------------------------------------------------------------------
def handmade(bench: Bench, which: str) -> None:
    """Run ``handmade_<which>_machines.sh``; it prints ``T <mark> <ms>`` lines."""
    image = bench.session.image
    key = bench.session.key
    # acpi=noirq: as the plugin starts one-CPU guests
    env = dict(os.environ, KERNEL=str(image.kernel), INITRD=str(image.initrd),
               CMDLINE=image.cmdline + " acpi=noirq",
               SSH_KEY=str(key.private_path), SSH_PUB=key.public_line)
    script = HERE / f"handmade_{which}_machines.sh"
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    marks = {w[1]: int(w[2]) / 1000 for line in out.stdout.splitlines() if (w := line.split())[0] == "T"}
    prefix = f"scenario/{which} machines, by hand (cold)"
    bench.add(f"{prefix}/SSH up", marks["ssh_up"])
    bench.add(f"{prefix}/first line to last assertion", marks["scenario_done"])
    bench.add(f"{prefix}/teardown", marks["cleaned_up"] - marks["scenario_done"])
    bench.add(f"{prefix}/total", marks["cleaned_up"])


def xdist(bench: Bench) -> None:
    """Wall time of the example suite with ``-n 0`` and ``-n 2``, as subprocesses."""
    pytest = Path(sys.executable).with_name("pytest")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    took = {}
    for workers in ("0", "2"):
        began = time.monotonic()
        out = subprocess.run(
            [str(pytest), "-p", "netlab", "-q", "-n", workers, "example_tests"],
            cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"example suite failed with -n {workers}:\n{out.stdout[-3000:]}")
        took[workers] = time.monotonic() - began
        bench.add(f"xdist/example suite -n {workers}", took[workers])
    # each pair ran back to back: its ratio does not mix a quiet moment with a busy one
    bench.add("xdist/speed-up of one -n 0, -n 2 pair", took["0"] / took["2"])


# -- report ---------------------------------------------------------------------------
def package_images(bench: Bench, packages: str, runs: int, rebuild: bool) -> None:
    """A package image: its first build (with ``rebuild``: the cached one is removed
    first; apt's downloads stay cached), the cached lookup, and one guest on it from
    ``start()`` to SSH-ready, to set beside the default image's ``snapshot/1 guest``."""
    import shutil

    from pytest_netlab.package_image import package_image

    label = f"package image {packages}"
    base = bench.session.image
    if rebuild:
        cached = package_image(packages, base=base)
        shutil.rmtree(cached.root)
    started = time.monotonic()
    image = package_image(packages, base=base)
    bench.add(f"{label}/first build (or the cached one)", time.monotonic() - started)
    for _ in range(runs):
        with timed(bench, f"{label}/cached lookup"):
            package_image(packages, base=base)

    def declare(lab: Lab) -> list[VM]:
        return [lab.vm("h1", nics=[lab.bridge("br1")], image=image)]

    phases(Bench(bench.session, False), "snapshot", declare, "warm-up")  # makes its template
    for _ in range(runs):
        phases(bench, "snapshot", declare, f"1 guest, {label}")


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values), "samples": values}


def ratio(samples: Samples, numerator: str, denominator: str) -> float | None:
    if numerator in samples and denominator in samples:
        return statistics.median(samples[numerator]) / statistics.median(samples[denominator])
    return None


def other_qemus(ours: set[int]) -> int:
    count = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) not in ours:
            try:
                if (proc / "comm").read_text().startswith("qemu-system"):
                    count += 1
            except OSError:
                continue
    return count


def print_table(report: dict[str, Any]) -> None:
    print(f"accelerator: {report['accelerator']}; {report['cpus']} CPUs; load average "
          f"{report['load']['before']} before, {report['load']['after']} after; QEMU processes of "
          f"others seen: {report['load']['other_qemu_processes']}")
    print(f"{'measure':<72} {'median':>8} {'min':>8} {'max':>8} {'n':>3}")
    for name, s in report["results"].items():
        unit = "" if "MiB" in name or "speed-up" in name or " / " in name else " s"
        print(f"{name:<72} {s['median']:>8.3f} {s['min']:>8.3f} {s['max']:>8.3f} {s['runs']:>3}{unit}")
    for name, value in report["ratios"].items():
        if value is not None:
            print(f"ratio {name:<66} {value:>8.2f}")


def resume_round(bench: Bench) -> None:
    """One round of the resumed labs: the two ways of resuming side by side, so that
    both see the same load, and the scenarios."""
    for boot in ("snapshot", STATE_FILE):
        phases(bench, boot, declare_one, "1 guest")
        phases(bench, boot, declare_three, "3 guests")
    # a pair measured back to back: its ratio does not mix a quiet moment with a busy one
    for label in ("1 guest", "3 guests"):
        for what in ("SSH up", "QEMU CPU time to SSH up, per guest"):
            pair = [bench.samples[f"{boot}/{label}/{what}"][-1] for boot in ("snapshot", STATE_FILE)]
            bench.add(f"resume/{label} {what}, copy-on-write / state file, one pair",
                      pair[0] / pair[1])
    scenario_three(bench, "snapshot", extras=True)
    scenario_two(bench, "snapshot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each measure (default 5)")
    parser.add_argument("--cold-runs", type=int, default=None,
                        help="repetitions of cold boots and hand-made labs (default: --runs)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--skip-xdist", action="store_true", help="skip the -n 2 / -n 0 example suite runs")
    parser.add_argument("--xdist-runs", type=int, default=3,
                        help="pairs of -n 0 and -n 2 example suite runs (default 3)")
    parser.add_argument("--skip-handmade", action="store_true", help="skip the hand-made scripts")
    parser.add_argument("--skip-cold", action="store_true", help="skip cold boots")
    parser.add_argument("--packages", default="frr,iperf3",
                        help="the package image measured (default frr,iperf3; '' skips it)")
    parser.add_argument("--package-rebuild", action="store_true",
                        help="remove the cached package image first, to time a first build")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each sample as it comes")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 and not args.skip_handmade:
        parser.error("the hand-made scripts need root (ip netns): run as root, or with --skip-handmade")
    logging.basicConfig(level=logging.WARNING)
    # qemu.qmp logs a reset connection at every QEMU quit as an error: noise here
    logging.getLogger("qemu").setLevel(logging.CRITICAL)
    cold_runs = args.cold_runs if args.cold_runs is not None else args.runs

    session = NetlabSession()
    bench = Bench(session, args.verbose)
    ours = {os.getpid()}
    load_before = os.getloadavg()[0]
    others = other_qemus(ours)
    try:
        # untimed: templates for these layouts are made once per machine, and caches warm
        phases(Bench(session, False), "snapshot", declare_three, "warm-up")
        phases(Bench(session, False), STATE_FILE, declare_three, "warm-up")
        for _ in range(args.runs):
            resume_round(bench)
        if args.packages:
            package_images(bench, args.packages, args.runs, args.package_rebuild)
        for _ in range(0 if args.skip_cold else cold_runs):
            phases(bench, "cold", declare_one, "1 guest")
            phases(bench, "cold", declare_three, "3 guests")
        for _ in range(0 if args.skip_handmade else cold_runs):
            handmade(bench, "two")
            handmade(bench, "three")
            if not args.skip_cold:
                scenario_three(bench, "cold", extras=False)
        if not args.skip_xdist:
            for _ in range(max(1, args.xdist_runs)):
                xdist(bench)
    finally:
        session.close()

    s = bench.samples
    report: dict[str, Any] = {
        "accelerator": str(session.accel),
        "cpus": os.cpu_count(),
        "load": {"before": load_before, "after": os.getloadavg()[0], "other_qemu_processes": others},
        "results": {name: summary(values) for name, values in s.items()},
        "ratios": {
            "example suite -n 2 speed-up (-n 0 / -n 2)":
                ratio(s, "xdist/example suite -n 0", "xdist/example suite -n 2"),
            "three machines, plugin snapshot / by hand (to last assertion)":
                ratio(s, "scenario/three machines, plugin snapshot/first line to last assertion",
                      "scenario/three machines, by hand (cold)/first line to last assertion"),
            "three machines, plugin cold / by hand (to last assertion)":
                ratio(s, "scenario/three machines, plugin cold/first line to last assertion",
                      "scenario/three machines, by hand (cold)/first line to last assertion"),
            "three machines, plugin snapshot / by hand (total with teardown)":
                ratio(s, "scenario/three machines, plugin snapshot/total",
                      "scenario/three machines, by hand (cold)/total"),
            "two machines, plugin snapshot / by hand (total with teardown)":
                ratio(s, "scenario/two machines, plugin snapshot/total",
                      "scenario/two machines, by hand (cold)/total"),
            "1 guest SSH up, package image / default image (snapshot)":
                ratio(s, f"snapshot/1 guest, package image {args.packages}/SSH up",
                      "snapshot/1 guest/SSH up"),
            "1 guest SSH up, RAM copy-on-write / from a state file":
                ratio(s, "snapshot/1 guest/SSH up", f"{STATE_FILE}/1 guest/SSH up"),
            "3 guests' USS, RAM copy-on-write / from a state file":
                ratio(s, "memory/snapshot/QEMU USS per guest, 3 guests (MiB)",
                      f"memory/{STATE_FILE}/QEMU USS per guest, 3 guests (MiB)"),
            "1 guest SSH up, snapshot / cold":
                ratio(s, "snapshot/1 guest/SSH up", "cold/1 guest/SSH up"),
            "3 guests SSH up, snapshot / cold":
                ratio(s, "snapshot/3 guests/SSH up", "cold/3 guests/SSH up"),
        },
    }
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
