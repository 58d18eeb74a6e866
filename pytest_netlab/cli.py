"""The ``netlab`` command: cleanup, image management and a health check (``doctor``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import NetlabError


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from .cleanup import remove_leftovers
    from .session import runtime_base

    report = remove_leftovers(runtime_base(), dry_run=args.dry_run)
    for line in report.lines():
        print(("would have " if args.dry_run else "") + line)
    if not report:
        print("nothing to clean: no leftovers of dead pytest-netlab runs")
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    from . import image

    if args.action == "build":
        built = image.default_image(rebuild=args.rebuild, progress=lambda msg: print(msg, flush=True))
        print(f"kernel {built.kernel}\ninitrd {built.initrd}")
    elif args.action == "info":
        print(json.dumps(image.image_info(), indent=2, default=str))
    else:
        from .qemu import qemu_version
        from .templates import TemplateStore

        # saved boots of a guest resume only into its image: they go with it
        templates = TemplateStore(image.cache_root() / "templates", qemu_version())
        removed = image.clean_images() + templates.clean()
        print("\n".join(f"removed {p}" for p in removed) or "no cached images")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import checks

    failed = False
    for check in checks(guests=args.guests):
        print(check.line(), flush=True)
        failed |= check.required and not check.ok
    print("verdict: " + ("pytest-netlab cannot run here (see FAIL above)" if failed
                         else "pytest-netlab can run here"))
    return 1 if failed else 0


def _cmd_up(args: argparse.Namespace) -> int:
    import os
    import signal
    import tempfile
    import time
    from pathlib import Path

    from .labspec import Topology
    from .netns import NETNS_RUN_DIR
    from .session import NetlabSession

    topology = Topology.from_toml(Path(args.topology))
    session = NetlabSession(accel_request=args.accel)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="netlab-up-"))

    owner = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)  # a helper pyroute2 forked: die as SIGTERM would kill it
        raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C

    lab = session.new_lab(workdir)
    try:
        print(f"netlab: bringing up {args.topology} ({session.accel})", flush=True)
        vms = topology.apply(lab)
        print(f"lab {lab.name} is up; files in {workdir}")
        print(f"  lab namespace: nsenter --net={NETNS_RUN_DIR / lab.name}")
        for name, vm in vms.items():
            print(
                f"  {name}: ssh -i {session.key.private_path} -p {vm.host_port(22)} "
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1"
            )
            if vm.addresses:  # chosen by the address plan (bridges with a subnet)
                print("    " + ", ".join(f"{nic} {' '.join(a)}" for nic, a in vm.addresses.items()))
        print(topology.mermaid(), end="", flush=True)
        signal.signal(signal.SIGTERM, stop)
        try:
            if args.hold is not None:
                time.sleep(args.hold)
            elif sys.stdin.isatty():
                input("press Enter (or Ctrl-C) to tear the lab down\n")
            else:
                print("send SIGTERM or SIGINT to tear the lab down", flush=True)
                signal.pause()
        except (KeyboardInterrupt, EOFError):
            pass
    finally:
        lab.close()
        session.close()
        print(f"lab {lab.name} is down", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cleanup = sub.add_parser("cleanup", help="remove namespaces, QEMU processes and files left by dead runs")
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cleanup.set_defaults(func=_cmd_cleanup)
    img = sub.add_parser("image", help="build, describe or remove the cached guest image")
    img.add_argument("action", choices=("build", "info", "clean"))
    img.add_argument("--rebuild", action="store_true", help="build even if a cached image exists")
    img.set_defaults(func=_cmd_image)
    doctor = sub.add_parser(
        "doctor", help="check that this machine can run network labs, and say how to fix what fails"
    )
    doctor.add_argument("--guests", type=int, default=4, help="guests to check free memory for (default 4)")
    doctor.set_defaults(func=_cmd_doctor)
    up = sub.add_parser(
        "up", help="bring a lab up from a topology file (TOML), print how to reach each guest, "
        "and tear it down on Enter, Ctrl-C or SIGTERM"
    )
    up.add_argument("topology", help="a TOML topology file (see docs/topology.md)")
    up.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="default: auto")
    up.add_argument("--workdir", help="where consoles and logs go (default: a new temporary directory)")
    up.add_argument("--hold", type=float, metavar="SECONDS",
                    help="tear down after SECONDS instead of waiting for Enter or a signal")
    up.set_defaults(func=_cmd_up)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except NetlabError as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
