"""Evidence of a failed test: what each guest and the lab namespace looked like at the
moment of failure, written to a per-test directory, with short excerpts for the report.

Nothing here knows pytest: :func:`collect` takes labs and a directory and returns
``(title, text)`` sections; the plugin attaches them to the report. Capturing must
never hang nor hide the original failure, so every step has a short timeout, and a
step that fails is logged and noted in its section instead of raising.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .untrusted import printable

if TYPE_CHECKING:
    from .guest import VM
    from .lab import Lab

log = logging.getLogger(__name__)

# the state that explains most network failures; each is optional in a guest
# (`bridge` exists only where a guest has bridges), so a missing tool is just noted
STATE_COMMANDS: tuple[tuple[str, str], ...] = (
    ("addr", "ip -d addr"),
    ("route", "ip route; ip -6 route"),
    ("neigh", "ip neigh"),
    ("bridge-link", "bridge link"),
    ("bridge-fdb", "bridge fdb"),
    ("sysctl", "sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding "
               "net.ipv4.conf.all.rp_filter"),
    ("qdisc", "tc qdisc"),
)
# in guests only (the lab namespace runs STATE_COMMANDS on the host's file system): the
# output of daemons started with vm.daemon() (pytest_netlab.guest.DAEMON_LOG_DIR)
GUEST_COMMANDS: tuple[tuple[str, str], ...] = (
    ("daemons", "for f in /var/log/netlab/*.log; do [ -f \"$f\" ] || continue; "
                "echo \"== $f (last 50 lines)\"; tail -n 50 \"$f\"; done"),
)
GUEST_TIMEOUT = 10.0
NAMESPACE_TIMEOUT = 5.0
CONSOLE_TAIL = 30
_MARK = "@@netlab-section "
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_nodeid(nodeid: str, limit: int = 150) -> str:
    """A directory name for a test id: ``tests/test_a.py::test_b[x-1]`` ->
    ``tests_test_a.py__test_b_x-1_`` (only letters, digits, ``._-``)."""
    name = _UNSAFE.sub("_", nodeid.replace("::", "__")).strip("._") or "test"
    return name[:limit]


@dataclass
class Evidence:
    """What :func:`collect` wrote and what it could not capture."""

    directory: Path
    sections: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _state_script(commands: tuple[tuple[str, str], ...] = STATE_COMMANDS) -> str:
    # one SSH round trip for all of it: under TCG each exec costs 50-80 ms
    parts = [f"echo '{_MARK}{name}'; {{ {cmd}; }} 2>&1" for name, cmd in commands]
    return "; ".join(parts)


_SECTIONS = frozenset(name for name, _ in STATE_COMMANDS + GUEST_COMMANDS)


def split_sections(output: str) -> dict[str, str]:
    """Split the output of the state script into its named parts. Only the names of
    :data:`STATE_COMMANDS` and :data:`GUEST_COMMANDS` start a part (they become file names):
    a mark line with any other name, as a guest's own program may print, is kept as text of
    the part it is in."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        name = line[len(_MARK):].strip() if line.startswith(_MARK) else None
        if name in _SECTIONS and name not in found:
            current = found[name] = []
        elif current is not None:
            current.append(line + "\n")
    return {name: "".join(lines) for name, lines in found.items()}


def format_history(vm: VM, limit: int | None = None) -> str:
    """The commands the test ran in *vm*, in order: status, duration, command."""
    records = vm.history
    if limit is not None and len(records) > limit:
        lines = [f"... ({len(records) - limit} earlier commands in the file)"]
        records = records[-limit:]
    else:
        lines = []
    for record in records:
        status = "no-exit" if record.status is None else f"exit {record.status}"
        stamp = time.strftime("%H:%M:%S", time.localtime(record.started))
        lines.append(f"{stamp} {status:>8} {record.duration:7.3f}s  {record.command}")
    return "\n".join(lines) or "(no commands run)"


_OWN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# a new file, or one replaced in place; never through a symbolic link
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def _write(path: Path, text: str | bytes) -> None:
    """Write an evidence file: its name is one of the plugin's (letters, digits, ``._-``),
    its directory is made if missing, and a symbolic link in its place is refused
    (``OSError``) rather than followed."""
    if not _OWN_NAME.match(path.name):
        raise ValueError(f"evidence file name {path.name!r} is not one of the plugin's")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode(errors="surrogateescape") if isinstance(text, str) else text
    fd = os.open(path, _CREATE, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _copy(source: Path, target: Path) -> None:
    """Copy a host file into the evidence, as :func:`_write` writes (no link followed)."""
    if not _OWN_NAME.match(target.name):
        raise ValueError(f"evidence file name {target.name!r} is not one of the plugin's")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, os.fdopen(os.open(target, _CREATE, 0o644), "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)


def _guest(vm: VM, directory: Path, evidence: Evidence) -> str:
    """Capture one guest into *directory*; return the report text for it."""
    notes: list[str] = []
    # the history first: capturing runs commands too, and they are not the test's
    history = format_history(vm)
    _write(directory / "commands.txt", history + "\n")
    machine = vm.machine
    if machine is not None:
        try:
            if machine.console_log.exists():
                _copy(machine.console_log, directory / "console.log")
        except OSError as exc:
            notes.append(f"console log not copied: {exc}")
    state = ""
    if not vm.started or machine is None:
        notes.append("guest not started: no state captured")
    elif not machine.is_running():
        notes.append(f"guest's QEMU is not running (exit status {machine.exitcode()}): no state captured")
    else:
        try:
            script = _state_script(STATE_COMMANDS + GUEST_COMMANDS)
            result = vm.ssh(script, check=False, timeout=GUEST_TIMEOUT)
            vm.forget_last_commands(1)
            state = result.stdout + result.stderr
            for name, text in split_sections(state).items():
                _write(directory / f"{name}.txt", text)
        except Exception as exc:  # noqa: BLE001 - evidence must never mask the failure
            notes.append(f"state not captured: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    for note in notes:
        evidence.problems.append(f"{vm.name}: {note}")
        log.warning("evidence of %s: %s", vm.name, printable(note))
    parts = split_sections(state)
    console = machine.console_tail(CONSOLE_TAIL) if machine is not None else "  (not launched)"
    lines = [
        f"files: {directory}",
        *(f"note: {n}" for n in notes),
        "--- commands run (time, status, duration, command) ---",
        format_history(vm, limit=40),
        "--- ip addr (brief) ---",
        _brief_addresses(parts.get("addr", "")) or "(not captured)",
        "--- ip route ---",
        parts.get("route", "(not captured)").rstrip(),
        "--- ip neigh ---",
        parts.get("neigh", "(not captured)").rstrip() or "(empty)",
        "--- forwarding ---",
        parts.get("sysctl", "(not captured)").rstrip(),
        f"--- console (last {CONSOLE_TAIL} lines) ---",
        console,
    ]
    if parts.get("daemons", "").strip():
        lines += ["--- daemon logs (vm.daemon) ---", parts["daemons"].rstrip()]
    return "\n".join(lines)


def _brief_addresses(addr: str) -> str:
    """``eth0 UP 10.20.10.1/24`` lines from ``ip -d addr`` output."""
    lines: list[str] = []
    for line in addr.splitlines():
        match = re.match(r"^\d+: (\S+?)(?:@\S+)?: <([^>]*)>", line)
        if match:
            lines.append(f"{match.group(1)} <{match.group(2)}>")
        elif line.strip().startswith(("inet ", "inet6 ")) and lines:
            lines[-1] += " " + line.split()[1]
    return "\n".join(lines)


def _namespace(lab: Lab, directory: Path, evidence: Evidence) -> str:
    if not lab.namespace.created:
        return "lab namespace not created"
    try:
        # one nsenter for all of it, as in a guest
        result = lab.run(_state_script(), check=False, timeout=NAMESPACE_TIMEOUT)
        parts = split_sections(result.stdout + result.stderr)
    except Exception as exc:  # noqa: BLE001 - evidence must never mask the failure
        note = f"not captured: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        evidence.problems.append(f"{lab.name}: {note}")
        return f"files: {directory}\nnote: {note}"
    outputs: list[str] = []
    for name, command in STATE_COMMANDS:
        text = parts.get(name, "")
        _write(directory / f"{name}.txt", text)
        if name in ("bridge-link", "qdisc", "sysctl"):
            outputs += [f"--- {command} ---", text.rstrip() or "(empty)"]
    return "\n".join([f"files: {directory}", *outputs])


def collect(labs: Iterable[Lab], directory: Path, host: str | None = None) -> Evidence:
    """Write the evidence of every guest of *labs* and of their namespaces under
    *directory*; return it with the report sections. Never raises for a guest or
    command that fails: that is noted instead. *host*: the machine the report names
    (an xdist worker on another machine), as in ``host:directory``."""
    evidence = Evidence(directory)
    labs = list(labs)
    started = time.monotonic()
    for lab in labs:
        base = directory / lab.name if len(labs) > 1 else directory
        try:
            evidence.sections.append(
                (f"netlab {lab.name} namespace", _namespace(lab, base / "lab-namespace", evidence))
            )
        except Exception as exc:  # noqa: BLE001 - evidence must never mask the failure
            evidence.problems.append(f"{lab.name}: {exc}")
        vms = list(lab.vms.values())
        # guests answer in parallel: a stuck one costs its timeout once, not once each
        with ThreadPoolExecutor(max_workers=max(len(vms), 1), thread_name_prefix="evidence") as pool:
            futures = [pool.submit(_guest, vm, base / vm.name, evidence) for vm in vms]
        for vm, future in zip(vms, futures, strict=True):
            try:
                text = future.result()
            except Exception as exc:  # noqa: BLE001 - evidence must never mask the failure
                text = f"not captured: {type(exc).__name__}: {exc}"
                evidence.problems.append(f"{vm.name}: {text}")
            evidence.sections.append((f"netlab {vm.name}", text))
        if lab.diagram:
            _write(base / "topology.mmd", lab.diagram)
        for extra in lab.evidence_files():
            try:
                _copy(extra, base / extra.name)
            except (OSError, ValueError) as exc:
                evidence.problems.append(f"{extra}: not copied: {exc}")
    where = f"{host}:{directory}" if host else str(directory)
    summary = [f"evidence of the failure in {where} ({time.monotonic() - started:.1f} s)"]
    summary += [f"problem: {p}" for p in evidence.problems]
    evidence.sections.insert(0, ("netlab artifacts", "\n".join(summary)))
    _write(directory / "README.txt", "\n".join(summary) + "\n")
    return evidence
