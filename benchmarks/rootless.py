"""Rootless labs beside root ones: the same rows of ``bench.py``, measured in turns as root
and as an ordinary user in one run, so that both see the same load.

Run as root from a checkout whose virtualenv the user can run (setup.sh's, made from
Debian's ``/usr/bin/python3``; one under /root is not)::

    sudo .venv/bin/python benchmarks/rootless.py --user alice --rounds 3

Each round runs ``bench.py --runs 1`` (resumed labs of 1 and 3 guests, the two- and
three-machine scenarios; no cold boots, hand-made scripts, package images or -n 2 runs)
once as root and once as the user, in alternating order. It prints each row's median over
the rounds for both, and the rootless / root ratio (the target: within 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).with_name("bench.py")
ROWS = ["--runs", "1", "--skip-xdist", "--skip-handmade", "--skip-cold", "--packages", ""]


def _as_user(user: pwd.struct_passwd, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user.pw_name, "--", "env", "-i", f"HOME={user.pw_dir}",
            f"USER={user.pw_name}", "LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            *argv]


def _one(argv: list[str], out: Path) -> dict[str, list[float]]:
    subprocess.run([*argv, "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
    results = json.loads(out.read_text())["results"]
    return {name: row["samples"] for name, row in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--user", required=True, help="the ordinary user who runs the rootless half")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one run each (default 3)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of both halves (default: this one; the user must run it)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: it runs the root half itself and the other as --user")
    try:
        user = pwd.getpwnam(args.user)
    except KeyError:
        parser.error(f"--user {args.user}: no such user")
    if user.pw_uid == 0:
        parser.error(f"--user {args.user} is root: name an ordinary user")
    samples: dict[str, dict[str, list[float]]] = {"root": {}, "rootless": {}}
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o755)
        for round_number in range(args.rounds):
            order = ["root", "rootless"] if round_number % 2 == 0 else ["rootless", "root"]
            for mode in order:
                out = Path(scratch) / f"{mode}-{round_number}.json"
                command = [args.python, str(BENCH), *ROWS]
                if mode == "rootless":
                    out.touch()
                    os.chown(out, user.pw_uid, user.pw_gid)
                    command = _as_user(user, command)
                for name, values in _one(command, out).items():
                    samples[mode].setdefault(name, []).extend(values)
    print(f"{'measure':<70} {'root':>8} {'rootless':>9} {'ratio':>6}  (medians of {args.rounds} rounds)")
    for name, values in samples["root"].items():
        if name not in samples["rootless"]:
            continue
        root, rootless = statistics.median(values), statistics.median(samples["rootless"][name])
        print(f"{name:<70} {root:>8.3f} {rootless:>9.3f} {rootless / root if root else float('nan'):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
