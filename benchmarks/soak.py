"""Soak test: create and tear down many labs in one process, then look for leaks.

Not part of the test suite (it takes minutes). Run as root from the repository:

    PYTHONPATH=. .venv/bin/python benchmarks/soak.py --labs 200 --guest-every 10

Every lab gets a namespace with two bridges, TAPs on them and an address; every
``--guest-every``-th lab also boots a guest on ``br1`` (plus a daemon in the namespace)
and pings across the bridge. Afterwards it compares, against the start: this process's
namespaces, the host's links, processes owned by this process (QEMU, daemons), its open
file descriptors and threads, and the session's runtime directory. It prints one JSON
object and exits 1 if anything leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pytest_netlab.owner import OWNER_ENV, Owner
from pytest_netlab.session import NetlabSession


def _my_namespaces() -> list[str]:
    prefix = f"netlab-{os.getpid()}-"
    return sorted(p.name for p in Path("/run/netns").glob(f"{prefix}*"))


def _host_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def _owned_processes() -> list[str]:
    """Live processes marked as made by this process (QEMU, lab daemons)."""
    me = f"{OWNER_ENV}={Owner.me().tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if me in (entry / "environ").read_bytes().split(b"\0"):
                found.append(f"{entry.name} {(entry / 'cmdline').read_bytes()[:60]!r}")
        except OSError:
            continue
    return found


def _children() -> list[str]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = entry.read_text()
        except OSError:
            continue
        if text[text.rindex(")") + 2:].split()[1] == me:
            found.append(text.split()[0])
    return found


def _state() -> dict[str, object]:
    return {
        "namespaces": _my_namespaces(),
        "host_links": _host_links(),
        "owned_processes": _owned_processes(),
        "children": _children(),
        "open_fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
    }


def run_lab(session: NetlabSession, workdir: Path, with_guest: bool) -> None:
    with session.new_lab(workdir) as lab:
        br1, br2 = lab.bridge("br1"), lab.bridge("br2")
        br1.add_address("10.20.10.254/24")
        if with_guest:
            h1 = lab.vm("h1", nics=[br1, br2])
            lab.spawn("sleep 600", name="sleeper")
            lab.start()
            h1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up")
            if not h1.ping("10.20.10.254", timeout=5):
                raise RuntimeError(f"{lab.name}: h1 cannot ping the bridge")
            # a file both ways: the SFTP channel must go with the lab too
            (workdir / "sent").write_text(lab.name)
            h1.put(workdir / "sent", "/tmp/sent")
            if h1.get("/tmp/sent", workdir / "back").read_text() != lab.name:
                raise RuntimeError(f"{lab.name}: the file came back changed")
        else:
            # TAPs as a guest's would be: opened by fd, gone when the fds are closed
            fds = lab.namespace.add_tap("vport11", "br1") + lab.namespace.add_tap("vport21", "br2")
            if sorted(lab.namespace.links()) != ["br1", "br2", "lo", "vport11", "vport21"]:
                raise RuntimeError(f"{lab.name}: unexpected links {lab.namespace.links()}")
            for fd in fds:
                os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", type=int, default=200)
    parser.add_argument("--guest-every", type=int, default=10, help="every Nth lab boots a guest")
    parser.add_argument("--accel", default="tcg", choices=("auto", "kvm", "tcg"))
    args = parser.parse_args()

    session = NetlabSession(accel_request=args.accel)
    session.settings()  # image, accelerator, templates: made before the baseline
    _ = session.key
    # warm-up: the first guest lab may build the snapshot template
    with tempfile.TemporaryDirectory(prefix="netlab-soak-") as tmp:
        run_lab(session, Path(tmp) / "warmup", with_guest=True)
        before = _state()
        started = time.monotonic()
        guests = 0
        for number in range(1, args.labs + 1):
            with_guest = args.guest_every > 0 and number % args.guest_every == 0
            run_lab(session, Path(tmp) / f"lab{number}", with_guest)
            guests += with_guest
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # the last QEMU's TAPs and sockets are released asynchronously
        after = _state()
    runtime_dir = session.runtime_dir
    session.close()
    leaks = {key: {"before": before[key], "after": after[key]}
             for key in before if before[key] != after[key]}
    if runtime_dir.exists():
        leaks["runtime_dir"] = {"before": None, "after": str(runtime_dir)}
    print(json.dumps({
        "labs": args.labs, "labs_with_guest": guests, "accelerator": session.accel.accel,
        "seconds": round(elapsed, 1), "leaks": leaks, "baseline": before,
    }, indent=2))
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
