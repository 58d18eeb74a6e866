"""A big lab, measured: a leaf-spine fabric from pytest_netlab.builders brought up, every
host pinging every other, the host CPU its guests use while idle, their memory, and
the teardown.

Run as root from a checkout::

    sudo .venv/bin/python benchmarks/fabric.py --spines 2 --leaves 6 --hosts-per-leaf 4

It prints JSON: seconds to all guests SSH-ready (``up``, including addresses and
routes), to all-pairs reachability, teardown; the CPU the idle guests' QEMUs used over
``--idle`` seconds (percent of one CPU, in all); resident memory (RSS and PSS) per
guest and in all. The load average is recorded with them: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from pytest_netlab.builders import leaf_spine  # noqa: E402
from pytest_netlab.labspec import Topology  # noqa: E402
from pytest_netlab.session import NetlabSession  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB, from /proc/PID/smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0]) / 1024
    return values["Rss"], values["Pss"]


def idle_cpu(pids: list[int], seconds: float) -> float:
    """Percent of one CPU the processes used together over *seconds*."""
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    return 100 * (sum(cpu_seconds(p) for p in pids) - before) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spines", type=int, default=2)
    parser.add_argument("--leaves", type=int, default=6)
    parser.add_argument("--hosts-per-leaf", type=int, default=4)
    parser.add_argument("--memory", type=int, default=None, help="MiB per guest (default 128)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    args = parser.parse_args()
    session = NetlabSession(accel_request="auto")
    topology = Topology.from_dict(leaf_spine(args.spines, args.leaves, args.hosts_per_leaf,
                                                  memory=args.memory))
    report: dict[str, object] = {"guests": len(topology.nodes), "load before": os.getloadavg()}
    lab = session.new_lab(session.runtime_dir / "fabric")
    try:
        started = time.monotonic()
        vms = topology.apply(lab)
        report["up"] = time.monotonic() - started
        hosts = [vm for vm in vms.values() if vm.spec.role == "host"]
        started = time.monotonic()
        matrix = lab.ping_all(hosts)  # each host pings every other, all at once
        report["all pairs"] = time.monotonic() - started
        report["pairs lost"] = len(matrix.unreachable)
        pids = [vm.machine.pid for vm in vms.values() if vm.machine is not None and vm.machine.pid]
        report["idle cpu % of one CPU"] = idle_cpu(pids, args.idle)
        rss, pss = zip(*(memory_mib(p) for p in pids), strict=True)
        report["rss MiB total"], report["pss MiB total"] = sum(rss), sum(pss)
        report["pss MiB per guest"] = sum(pss) / len(pids)
    finally:
        started = time.monotonic()
        lab.close()
        report["down"] = time.monotonic() - started
        session.close()
    report["load after"] = os.getloadavg()
    print(json.dumps(report, indent=2, default=lambda v: round(v, 2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
