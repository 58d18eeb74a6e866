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
        removed = image.clean_images()
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
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except NetlabError as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
