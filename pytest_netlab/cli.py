"""The ``pytest-netlab`` command (also ``python -m pytest_netlab``): cleanup, image
management, a health check (``doctor``), labs from topology files (``up``, ``down``), the
ways into running labs (``list``, ``ssh``, ``exec``, ``capture``) and pictures of
topologies (``graph``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import NetlabError

if TYPE_CHECKING:
    from .netns import NamespacePath


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from .cleanup import remove_leftovers
    from .image import cache_root
    from .session import runtime_base

    report = remove_leftovers(runtime_base(), template_dir=cache_root() / "templates", dry_run=args.dry_run)
    for line in report.lines():
        print(("would have " if args.dry_run else "") + line)
    if not report:
        print("nothing to clean: no leftovers of dead pytest-netlab runs")
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    from . import image

    if args.action == "build" and args.packages:
        from .package_image import package_image

        built = package_image(args.packages, progress=lambda msg: print(msg, flush=True))
        print(f"disk {built.disk}\npackages {' '.join(built.packages)}")
    elif args.action == "build":
        built = image.default_image(rebuild=args.rebuild, progress=lambda msg: print(msg, flush=True))
        print(f"kernel {built.kernel}\ninitrd {built.initrd}")
    elif args.action == "list":
        _list_images()
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


def _list_images() -> None:
    from .image import image_info
    from .package_image import list_images

    info = image_info()
    print(f"default  {info['path']}{'' if info['built'] else ' (not built)'}")
    for entry in list_images():
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(str(entry["last_used"]))))
        size = int(str(entry["size_bytes"])) / 2**20
        packages = entry["packages"]
        assert isinstance(packages, list)
        print(f"packages {' '.join(packages)}: {size:.0f} MiB, last used {used}, {entry['path']}")


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
    from pathlib import Path

    from . import access
    from .detached import DetachedLab
    from .labspec import Topology
    from .owner import sigterm_like_ctrl_c
    from .session import NetlabSession, runtime_base

    topology = Topology.from_toml(Path(args.topology))  # bad input: said before a fork
    if args.detach:
        return _detach(args)
    session = NetlabSession(  # "waiting for room" lines (the guest budget) go to stderr
        accel_request=args.accel, report=lambda line: print(line, file=sys.stderr, flush=True)
    )
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="netlab-up-"))

    lab = session.new_lab(workdir)
    state: Path | None = None
    try:
        print(f"netlab: bringing up {args.topology} ({session.accel})", flush=True)
        topology.apply(lab)
        text = access.describe(lab, state="up")
        print(text + topology.mermaid(), end="", flush=True)
        signal.signal(signal.SIGTERM, sigterm_like_ctrl_c(os.getpid()))  # tears down like Ctrl-C
        # found by pytest-netlab list, ssh, exec and capture (and pytest-netlab down)
        state = DetachedLab(
            lab.name, os.getpid(), str(Path(args.topology).resolve()), str(workdir), text,
            detached=args.ready_fd is not None,
        ).save(runtime_base())
        _hold(args, text)
    except NetlabError as exc:
        if args.ready_fd is not None:
            _report_ready(args.ready_fd, "error", str(exc))
        raise
    finally:
        lab.close()
        session.close()
        if state is not None:
            state.unlink(missing_ok=True)
        print(f"lab {lab.name} is down", flush=True)
    return 0


def _hold(args: argparse.Namespace, text: str) -> None:
    """Keep the lab of ``up`` until told to tear it down (Enter, a signal, --hold)."""
    import signal
    import time

    try:
        if args.ready_fd is not None:  # the background half of --detach
            _report_ready(args.ready_fd, "ok", text)
            while True:
                signal.pause()
        elif args.hold is not None:
            time.sleep(args.hold)
        elif sys.stdin.isatty():
            input("press Enter (or Ctrl-C) to tear the lab down\n")
        else:
            print("send SIGTERM or SIGINT to tear the lab down", flush=True)
            signal.pause()
    except (KeyboardInterrupt, EOFError):
        pass


def _report_ready(fd: int, status: str, text: str) -> None:
    """The background ``pytest-netlab up`` tells the foreground one how bring-up went."""
    import os

    with os.fdopen(fd, "w") as pipe:
        pipe.write(f"{status}\n{text}")


def _detach(args: argparse.Namespace) -> int:
    """Start ``pytest-netlab up`` again in the background, in a session of its own (no
    terminal, not killed with this shell), and return once its lab is up."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="netlab-up-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "netlab-up.log"
    read_end, write_end = os.pipe()
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_netlab.cli", "up", str(Path(args.topology).resolve()),
             "--accel", args.accel, "--workdir", str(workdir), "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            pass_fds=(write_end,), start_new_session=True, cwd="/",
        )
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()  # until the background process has reported and closed it
    status, _, text = answer.partition("\n")
    if status != "ok":
        proc.wait()
        log_tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        print(f"netlab: the lab did not come up: {text or log_tail}\n(log: {log_path})", file=sys.stderr)
        return 1
    proc.returncode = 0  # it lives on by design: no "still running" warning for it
    name = text.split()[1]
    print(text, end="")
    print(f"the lab runs in the background (pid {proc.pid}, log {log_path}); "
          f"tear it down with: pytest-netlab down {name}", flush=True)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from .detached import detached_labs, find, take_down
    from .errors import ConfigError
    from .session import runtime_base

    if not args.timeout > 0:
        raise ConfigError(
            f"pytest-netlab down --timeout {args.timeout:g} is not accepted: give seconds above 0"
        )
    base = runtime_base()
    if args.all:
        labs = detached_labs(base)
        if not labs:
            print("no detached labs")
    elif args.name is not None:
        labs = [find(base, args.name)]
    else:
        labs = detached_labs(base)
        if not labs:
            raise ConfigError("no detached labs to tear down (pytest-netlab up --detach makes them)")
        if len(labs) != 1:
            raise ConfigError(
                f"{len(labs)} detached labs ({', '.join(lab.name for lab in labs)}): "
                "name the one to tear down, or give --all"
            )
    failures = []
    for lab in labs:
        try:
            print(take_down(base, lab, timeout=args.timeout), flush=True)
        except NetlabError as exc:
            failures.append(exc)
            print(f"netlab: {exc}", file=sys.stderr)
    return 1 if failures else 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .running import running_labs, table
    from .session import runtime_base

    labs = running_labs(runtime_base())
    if args.json:
        print(json.dumps([lab.as_dict() for lab in labs], indent=2))
    else:
        print(table(labs), end="")
    return 0


def _ssh_argv(args: argparse.Namespace, *options: str) -> list[str]:
    """``ssh -F LABDIR/ssh_config OPTIONS -- NODE CMD...`` for the lab and node of *args*."""
    from .running import find_running
    from .session import runtime_base

    lab = find_running(runtime_base(), args.lab)
    node = lab.check_guest(args.node)
    # "--" first: a command word that begins with "-" is the guest's, not an ssh option
    return ["ssh", "-F", str(lab.ssh_config), *options, "--", node, *args.cmd]


def _cmd_ssh(args: argparse.Namespace) -> int:
    import os

    argv = _ssh_argv(args)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # the user's shell in the guest: ssh owns the terminal


def _cmd_exec(args: argparse.Namespace) -> int:
    import subprocess

    from .errors import ConfigError

    if not args.cmd:
        raise ConfigError(
            "pytest-netlab exec needs a command to run in the guest, "
            "e.g. pytest-netlab exec LAB h1 ip -br addr"
        )
    # no terminal, never a prompt; the exit status is the command's (255: ssh failed)
    return subprocess.run(_ssh_argv(args, "-T", "-o", "BatchMode=yes"), check=False).returncode


def _cmd_capture(args: argparse.Namespace) -> int:
    import os

    from .errors import ConfigError
    from .netns import find_namespace
    from .running import find_running
    from .session import runtime_base

    if sys.stdout.isatty():
        raise ConfigError(
            "pytest-netlab capture writes pcap to its output: pipe it (| wireshark -k -i -, | tcpdump -r -) "
            "or redirect it (> FILE.pcap)"
        )
    lab = find_running(runtime_base(), args.lab)
    namespace = find_namespace(runtime_base(), lab.name)
    if namespace is None:
        raise ConfigError(f"lab {lab.name} has no namespace any more: it is going down")
    if (problem := namespace.capture_problem()) is not None:
        raise ConfigError(problem)
    bridges = _bridges_of(namespace)
    if args.bridge not in bridges:
        raise ConfigError(
            f"lab {lab.name} has no bridge {args.bridge!r}: bridges are {', '.join(bridges) or 'none'}"
        )
    argv = namespace.enter([
        "tcpdump", "-n", "-i", args.bridge, "--immediate-mode", "-U", "-s", "0", "-w", "-",
        *args.filter,
    ])
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _bridges_of(namespace: NamespacePath) -> list[str]:
    import subprocess

    out = subprocess.run(
        namespace.enter(["ip", "-json", "link", "show", "type", "bridge"]),
        capture_output=True, text=True, check=True,
    ).stdout
    return sorted(str(link["ifname"]) for link in json.loads(out or "[]"))


def _cmd_graph(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .graph import render
    from .labspec import Topology

    print(render(Topology.from_toml(Path(args.topology)), args.format), end="")
    return 0


def _add_access_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """list, ssh, exec, capture and graph: the ways into running labs, like containerlab's."""
    from .graph import GRAPH_FORMATS

    listing = sub.add_parser(
        "list", help="the labs running on this machine: of pytest-netlab up (detached or not), kept by a "
        "test, or in a running test, with their owners"
    )
    listing.add_argument("--json", action="store_true", help="as JSON, one object per lab")
    listing.set_defaults(func=_cmd_list)
    for verb, func, text in (
        ("ssh", _cmd_ssh, "open a shell in a guest of a running lab, or run CMD there "
         "(ssh -F LABDIR/ssh_config)"),
        ("exec", _cmd_exec, "run CMD in a guest of a running lab, without a terminal; "
         "the exit status is CMD's (255 when ssh itself failed)"),
    ):
        verb_parser = sub.add_parser(verb, help=text)
        verb_parser.add_argument("lab", help="the lab's name (pytest-netlab list)")
        verb_parser.add_argument("node", help="the guest's name")
        verb_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments")
        verb_parser.set_defaults(func=func)
    capture = sub.add_parser(
        "capture", help="write what crosses a bridge of a running lab to stdout as pcap "
        "(pytest-netlab capture LAB BRIDGE | wireshark -k -i -)"
    )
    capture.add_argument("lab", help="the lab's name (pytest-netlab list)")
    capture.add_argument("bridge", help="the bridge's name, as in the topology")
    capture.add_argument("filter", nargs=argparse.REMAINDER, help="a tcpdump filter expression (optional)")
    capture.set_defaults(func=_cmd_capture)
    graph = sub.add_parser("graph", help="print a picture of a topology file as Mermaid or Graphviz text")
    graph.add_argument("topology", help="a TOML topology file (see docs/topology.md)")
    graph.add_argument("--format", choices=GRAPH_FORMATS, default="mermaid",
                       help="mermaid (default) or dot (Graphviz: | dot -Tsvg > lab.svg)")
    graph.set_defaults(func=_cmd_graph)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest-netlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cleanup = sub.add_parser("cleanup", help="remove namespaces, QEMU processes and files left by dead runs")
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cleanup.set_defaults(func=_cmd_cleanup)
    img = sub.add_parser("image", help="build, list, describe or remove the cached guest images")
    img.add_argument("action", choices=("build", "list", "info", "clean"))
    img.add_argument("--rebuild", action="store_true", help="build even if a cached image exists")
    img.add_argument(
        "--packages", default="", metavar="PKG,PKG",
        help="build: the package image with these Debian packages (see docs/package-images.md)",
    )
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
    how_long = up.add_mutually_exclusive_group()
    how_long.add_argument("--hold", type=float, metavar="SECONDS",
                          help="tear down after SECONDS instead of waiting for Enter or a signal")
    how_long.add_argument("--detach", action="store_true",
                          help="leave the lab running in the background and return; "
                          "tear it down with pytest-netlab down")
    up.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # --detach's background half
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="tear down a lab left running by pytest-netlab up --detach")
    which = down.add_mutually_exclusive_group()
    which.add_argument("name", nargs="?", help="the lab's name, as pytest-netlab up printed it "
                       "(default: the only detached lab)")
    which.add_argument("--all", action="store_true", help="every detached lab")
    down.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                      help="how long to wait for a lab's teardown (default 60)")
    down.set_defaults(func=_cmd_down)
    _add_access_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except NetlabError as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
