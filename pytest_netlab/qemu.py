"""One QEMU process and everything it owns: its QMP and console sockets, its log files.

Launch, wait, QMP and shutdown are separate steps; ``shutdown()`` asks QMP ``quit``,
then kills, and is safe to call twice and after QEMU died by itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BootTimeout, CommandTimeout, ConfigError, GuestGoneError, QemuError, StateLoadError

if TYPE_CHECKING:
    from qemu.qmp.legacy import QEMUMonitorProtocol

# qemu.qmp and pyroute2 (through .netns) are imported where a machine is launched or
# spoken to: finding QEMU and its version, as the pytest header does, needs neither

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
READY_MARK = "NETLAB-READY"
HOSTKEY_MARK = "NETLAB-HOSTKEY "
ERROR_MARK = "NETLAB-ERROR "
MGMT_NET = "100.127.255.0/24"
MGMT_GUEST_ADDR = "100.127.255.15/24"
MGMT_MAC = "02:6e:6c:00:00:01"
_USERNET_FWD = re.compile(
    r"TCP\[HOST_FORWARD\]\s+\d+\s+(?P<haddr>[\d.]+)\s+(?P<hport>\d+)\s+[\d.]+\s+(?P<gport>\d+)"
)


def find_qemu() -> str:
    """Path of ``qemu-system-x86_64``.

    Raises:
        ConfigError: it is not installed.
    """
    path = os.environ.get("NETLAB_QEMU") or shutil.which(QEMU_BINARY)
    if not path or not os.access(path, os.X_OK):
        raise ConfigError(
            f"QEMU binary {os.environ.get('NETLAB_QEMU') or QEMU_BINARY!r} not found: "
            "install it with 'apt-get install qemu-system-x86' or set NETLAB_QEMU to its path"
        )
    return path


@functools.cache
def qemu_version() -> str:
    """The first line of ``qemu-system-x86_64 --version``."""
    out = subprocess.run([find_qemu(), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


@dataclass
class NicConfig:
    """One guest NIC on a TAP: the TAP's descriptors are handed to QEMU."""

    mac: str
    model: str = "virtio-net-pci"
    fds: list[int] = field(default_factory=list)
    vectors: int | None = None
    nat: bool = False  # a user-mode (slirp) NAT NIC instead of a TAP: no fds


@dataclass(frozen=True)
class FsShare:
    """A host directory given to the guest as a virtio-9p device with *tag*.

    ``security_model=mapped-xattr``: QEMU creates the guest's files as its own user (the
    one running the tests) with host mode 0600/0700 and keeps the owner and mode the
    guest set in ``user.virtfs.*`` extended attributes, so a guest's root (QEMU runs as
    root here) can plant no setuid file or device node on the host.
    """

    path: Path
    tag: str
    readonly: bool = True

    def argv(self, index: int) -> list[str]:
        path = str(self.path).replace(",", ",,")  # QEMU's option syntax escapes ',' as ',,'
        fsdev = f"local,id=share{index},path={path},security_model=mapped-xattr"
        return ["-fsdev", fsdev + (",readonly=on" if self.readonly else ""),
                "-device", f"virtio-9p-pci,fsdev=share{index},mount_tag={self.tag}"]


@dataclass(frozen=True)
class MemoryFile:
    """Guest RAM in a file: *shared* (a template's, written through to the file) or
    private (a clone's copy-on-write mapping of a template's file, which QEMU opens
    read-write but never writes: ``MAP_PRIVATE``)."""

    path: Path
    shared: bool

    def argv(self, size_mib: int) -> list[str]:
        path = str(self.path).replace(",", ",,")
        return ["-object", f"memory-backend-file,id=ram0,mem-path={path},size={size_mib}M,"
                f"share={'on' if self.shared else 'off'}"]


@dataclass
class MachineConfig:
    """Everything needed to start one guest."""

    name: str
    kernel: Path
    initrd: Path | None
    cmdline: str
    memory_mib: int = 128
    cpus: int = 1
    accel: str = "tcg"
    nics: list[NicConfig] = field(default_factory=list)
    management: bool = True
    extra_args: list[str] = field(default_factory=list)
    drives: list[str] = field(default_factory=list)
    incoming: Path | None = None  # a saved state to resume instead of booting
    numa: bool = False  # guest RAM from a memory backend, as one NUMA node
    shares: list[FsShare] = field(default_factory=list)  # host directories (virtio-9p)
    # RAM in a file, migrated without its pages (x-ignore-shared); not with numa
    memory_file: MemoryFile | None = None


class QemuMachine:
    """One running QEMU process.

    Attributes give the guest's console lines as they arrive (``console_lines``), the
    host key it printed at boot (``host_key``) and the path of its logs.
    """

    def __init__(self, config: MachineConfig, workdir: Path) -> None:
        self.config = config
        self.name = config.name
        self.workdir = workdir
        self.console_log = workdir / "console.log"
        self.qemu_log = workdir / "qemu.log"
        self.log = log.getChild(config.name)
        self.argv: list[str] = []
        self.host_key: str | None = None
        self.console_lines: list[str] = []
        self.errors: list[str] = []
        # notified for every console line and when the console closes: all waiting for
        # the guest's output goes through _await_console()
        self._console_changed = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._console_sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._closed = False
        self._console_shell = False
        self._quit_sent = False  # a second quit, sent while QEMU exits, makes it reset QMP
        self.launched_at = 0.0
        self.ready_at = 0.0

    # -- launch -----------------------------------------------------------------------
    def build_argv(self, qmp_fd: int, console_fd: int) -> list[str]:
        c = self.config
        accel = "tcg,thread=multi" if c.accel == "tcg" and c.cpus > 1 else c.accel
        machine = "pc,usb=off,vmport=off" + (",memory-backend=ram0" if c.memory_file else "")
        argv = [
            find_qemu(), "-name", f"{c.name},debug-threads=on",
            "-machine", machine, "-accel", accel,
            "-cpu", "max" if c.accel == "tcg" else "host",
            "-smp", str(c.cpus), "-m", str(c.memory_mib),
        ]
        if c.numa:
            argv += [
                "-object", f"memory-backend-ram,id=mem0,size={c.memory_mib}M",
                "-numa", "node,nodeid=0,memdev=mem0",
            ]
        if c.memory_file is not None:
            argv += c.memory_file.argv(c.memory_mib)
        argv += [
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(c.kernel), "-append", c.cmdline,
            "-chardev", f"socket,id=mon,fd={qmp_fd}", "-mon", "chardev=mon,mode=control",
            "-chardev", f"socket,id=con,fd={console_fd}", "-serial", "chardev:con",
        ]
        if c.initrd is not None:
            argv += ["-initrd", str(c.initrd)]
        for i, nic in enumerate(c.nics):
            if nic.nat:
                # QEMU's defaults: 10.0.2.0/24, DHCP, gateway 10.0.2.2 = the host's loopback.
                # Not restricted: that NIC is the guest's way out through NAT.
                argv += ["-netdev", f"user,id=lab{i}"]
            elif len(nic.fds) > 1:
                argv += ["-netdev", f"tap,id=lab{i},fds={':'.join(map(str, nic.fds))},vhost=off"]
            else:
                argv += ["-netdev", f"tap,id=lab{i},fd={nic.fds[0]},vhost=off"]
            device = f"{nic.model},netdev=lab{i},mac={nic.mac},romfile="
            if nic.model == "virtio-net-pci" and len(nic.fds) > 1:
                vectors = nic.vectors if nic.vectors is not None else 2 * len(nic.fds) + 2
                device += f",mq=on,vectors={vectors}"
            argv += ["-device", device]
        if c.management:
            argv += [
                "-netdev",
                f"user,id=mgmt,net={MGMT_NET},restrict=on,hostfwd=tcp:127.0.0.1:0-:22",
                "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC},romfile=",
            ]
        for drive in c.drives:
            argv += ["-drive", drive]
        for i, fs in enumerate(c.shares):
            argv += fs.argv(i)
        # a new generation id on every start makes a resumed Linux guest reseed its RNG
        argv += ["-device", "vmgenid,guid=auto"]
        if c.incoming is not None:
            # started over QMP once MIGRATION events are on (see launch): events sent
            # while QMP is being negotiated would break the handshake
            argv += ["-incoming", "defer"]
        argv += c.extra_args
        return argv

    def launch(self) -> None:
        """Start QEMU. Call from the thread that owns the lab (see ``die_with_parent``).

        Raises:
            QemuError: QEMU could not be started.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        qmp_ours, qmp_theirs = socket.socketpair()
        con_ours, con_theirs = socket.socketpair()
        tap_fds = [fd for nic in self.config.nics for fd in nic.fds]
        from qemu.qmp import QMPError
        from qemu.qmp.legacy import QEMUMonitorProtocol

        from .netns import die_with_parent, owner_environment

        self.argv = self.build_argv(qmp_theirs.fileno(), con_theirs.fileno())
        self.log.debug("launch: %s", shlex.join(self.argv))
        try:
            with open(self.qemu_log, "wb") as out:
                self._proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    pass_fds=[qmp_theirs.fileno(), con_theirs.fileno(), *tap_fds],
                    env=owner_environment(),
                    preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl() call
                )
        except OSError as exc:
            qmp_ours.close()
            con_ours.close()
            raise QemuError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc
        finally:
            qmp_theirs.close()
            con_theirs.close()
            # QEMU holds the TAPs now: they vanish with it, however it ends
            for nic in self.config.nics:
                for fd in nic.fds:
                    os.close(fd)
                nic.fds = []
        self.launched_at = time.monotonic()
        (self.workdir / "qemu.pid").write_text(f"{self._proc.pid}\n")
        (self.workdir / "cmdline").write_text(shlex.join(self.argv) + "\n")
        self._console_sock = con_ours
        self._reader = threading.Thread(
            target=self._read_console, name=f"console-{self.name}", daemon=True
        )
        self._reader.start()
        self._qmp = QEMUMonitorProtocol(qmp_ours, nickname=self.name)
        try:
            self._qmp.connect()
        except (QMPError, OSError) as exc:
            raise self._died_error(f"QMP handshake failed ({exc})") from exc
        if self.config.incoming is not None:
            self._migration_capabilities()
            self.qmp("migrate-incoming", uri=f"exec:cat {shlex.quote(str(self.config.incoming))}")

    def _migration_capabilities(self) -> None:
        """Have QEMU send MIGRATION events, so that saving and loading a state are
        waited for without polling; with RAM in a file, leave the RAM out of the state
        (``x-ignore-shared``: a clone maps the template's file instead)."""
        capabilities = [{"capability": "events", "state": True}]
        if self.config.memory_file is not None:
            capabilities.append({"capability": "x-ignore-shared", "state": True})
        self.qmp("migrate-set-capabilities", capabilities=capabilities)

    def _read_console(self) -> None:
        assert self._console_sock is not None
        buffer = b""
        with open(self.console_log, "wb") as out:
            while True:
                try:
                    data = self._console_sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                out.write(data)
                out.flush()
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    self._console_line(raw.decode(errors="replace").rstrip("\r"))
        if buffer:
            self._console_line(buffer.decode(errors="replace"))
        with self._console_changed:  # QEMU is gone: waiters need not wait out their time
            self._console_changed.notify_all()

    def _console_line(self, line: str) -> None:
        self.log.debug("console: %s", line)
        with self._console_changed:
            self.console_lines.append(line)
            if line.startswith(HOSTKEY_MARK):
                self.host_key = line[len(HOSTKEY_MARK):].strip()
            elif line.startswith(ERROR_MARK):
                self.errors.append(line[len(ERROR_MARK):])
                self.log.warning("guest reported: %s", line[len(ERROR_MARK):])
            elif line.strip() == READY_MARK:
                self.ready_at = time.monotonic()
            self._console_changed.notify_all()

    def _await_console(self, found: Callable[[list[str]], bool], deadline: float) -> bool:
        """Wait until ``found(console_lines)`` holds, QEMU exits or *deadline* (a
        ``time.monotonic()`` value) passes; return whether it holds."""
        with self._console_changed:
            while not found(self.console_lines):
                left = deadline - time.monotonic()
                if left <= 0 or not self.is_running():
                    return found(self.console_lines)
                # the cap notices a QEMU that died before its console reader saw EOF
                self._console_changed.wait(min(left, 0.2))
        return True

    # -- state ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exitcode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def console_tail(self, lines: int = 30) -> str:
        tail = self.console_lines[-lines:]
        return "\n".join(f"  {self.name}| {line}" for line in tail) or "  (no console output)"

    def _died_error(self, what: str) -> QemuError:
        output = self.qemu_log.read_text(errors="replace").strip() if self.qemu_log.exists() else ""
        return QemuError(
            f"{self.name}: {what}; QEMU exit status {self.exitcode()}\n"
            f"command: {shlex.join(self.argv)}\n"
            f"QEMU output:\n{output or '(none)'}\n"
            f"console (last lines):\n{self.console_tail()}"
        )

    def wait_ready(self, timeout: float, since: float | None = None) -> None:
        """Wait until the guest printed its ready mark (its SSH server is listening),
        at most *timeout* seconds from *since* (a ``time.monotonic()`` value; now if not
        given).

        Raises:
            QemuError: QEMU exited first.
            BootTimeout: no ready mark within *timeout* seconds.
        """
        deadline = (time.monotonic() if since is None else since) + timeout
        if not self._await_console(lambda _: self.ready_at > 0, deadline):
            if not self.is_running():
                raise self._died_error("QEMU exited before the guest was ready")
            raise BootTimeout(
                    f"{self.name}: guest did not print {READY_MARK} (its SSH server is "
                    f"listening) within {timeout:g} s (accelerator {self.config.accel}; "
                    "raise it with --netlab-boot-timeout or the netlab_boot_timeout ini value); "
                f"console log {self.console_log}, "
                f"last lines:\n{self.console_tail()}"
            )
        if self.host_key is None:
            raise BootTimeout(f"{self.name}: guest was ready but printed no host key")

    def wait_console(self, mark: str, timeout: float) -> None:
        """Wait until the console showed a line equal to *mark*.

        Raises:
            QemuError: QEMU exited first.
            BootTimeout: no such line within *timeout* seconds.
        """
        if not self._await_console(lambda lines: mark in lines, time.monotonic() + timeout):
            if not self.is_running():
                raise self._died_error(f"QEMU exited before the guest printed {mark}")
            raise BootTimeout(
                f"{self.name}: guest did not print {mark} within {timeout:g} s; "
                f"console log {self.console_log}, last lines:\n{self.console_tail()}"
            )

    def write_console(self, text: str) -> None:
        """Type *text* on the guest's serial console."""
        if self._console_sock is None:
            raise GuestGoneError(f"{self.name}: no console (QEMU not launched)")
        self._console_sock.sendall(text.encode())

    def finish_incoming(self, timeout: float = 30.0) -> None:
        """Wait for the saved state given as ``incoming`` to load, then resume the guest.

        Raises:
            StateLoadError: QEMU refused the state (a damaged file).
            QemuError: QEMU exited or the state did not load in time.
        """
        try:
            status = self._wait_migration(timeout)
        except GuestGoneError:
            # QEMU exits as soon as it refuses a state, often before the event is read
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=2.0)
            log_text = self.qemu_log.read_text(errors="replace") if self.qemu_log.exists() else ""
            if "load of migration failed" not in log_text:
                raise
            status = "failed"
        if status != "completed":
            error = self._died_error(f"loading the saved state {self.config.incoming}: {status}")
            if status == "failed":  # QEMU read the file and refused it
                raise StateLoadError(str(error))
            raise error
        self.qmp("cont")

    def save_state(self, path: Path, timeout: float = 60.0) -> None:
        """Pause the guest and write its whole state to *path* (for ``incoming``)."""
        self.qmp("stop")
        self._migration_capabilities()
        self.qmp("migrate", uri=f"exec:cat > {shlex.quote(str(path))}")
        status = self._wait_migration(timeout)
        if status != "completed":
            raise QemuError(f"{self.name}: saving the guest state to {path}: {status}")

    def _wait_migration(self, timeout: float) -> str:
        """Wait for the migration (in or out) to end, woken by QMP's MIGRATION events;
        return its last status ("stalled" when it did not end within *timeout*)."""
        assert self._qmp is not None
        deadline = time.monotonic() + timeout
        # events before QMP was negotiated are lost: ask once, then follow the events
        status = self.qmp("query-migrate").get("status") or "none"
        while status not in ("completed", "failed", "cancelled"):
            left = deadline - time.monotonic()
            if left <= 0:
                return f"stalled ({status})"
            try:
                # short waits: a QEMU that dies sends no event
                event = self._qmp.pull_event(wait=min(left, 0.2))
            except TimeoutError:
                self.qmp("query-status")  # GuestGoneError if QEMU is gone
                continue
            if event is not None and event.get("event") == "MIGRATION":
                status = event["data"]["status"]
        return status

    # -- QMP --------------------------------------------------------------------------
    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command and return its ``return`` value.

        Raises:
            GuestGoneError: QEMU is not running.
            QemuError: QEMU answered with an error.
        """
        if self._qmp is None or not self.is_running():
            raise GuestGoneError(
                f"{self.name}: QEMU is not running (exit status {self.exitcode()}); "
                f"console log {self.console_log}"
            )
        from qemu.qmp import QMPError

        try:
            return self._qmp.cmd(command, **arguments)
        except QMPError as exc:
            if not self.is_running():
                raise GuestGoneError(f"{self.name}: QEMU died during QMP {command}") from exc
            raise QemuError(f"{self.name}: QMP {command} {arguments} failed: {exc}") from exc

    def hmp(self, command: str) -> str:
        return str(self.qmp("human-monitor-command", **{"command-line": command}))

    def host_forwards(self) -> dict[int, int]:
        """Forwarded TCP ports of the management NIC: guest port -> host port."""
        return {
            int(m["gport"]): int(m["hport"])
            for m in _USERNET_FWD.finditer(self.hmp("info usernet"))
        }

    def add_host_forward(self, guest_port: int) -> int:
        """Forward a new port on 127.0.0.1 (chosen by the kernel) to TCP *guest_port* of
        the guest's management NIC; return the host port.

        Raises:
            QemuError: QEMU refused the rule.
            GuestGoneError: QEMU is not running.
        """
        answer = self.hmp(f"hostfwd_add mgmt tcp:127.0.0.1:0-:{guest_port}").strip()
        if answer:  # HMP reports failures as text, not as a QMP error
            raise QemuError(f"{self.name}: forwarding guest port {guest_port}: {answer}")
        forwards = self.host_forwards()
        if guest_port not in forwards:
            raise QemuError(f"{self.name}: no forward of guest port {guest_port} after hostfwd_add")
        return forwards[guest_port]

    def remove_host_forward(self, host_port: int) -> None:
        """Remove the forward from 127.0.0.1:*host_port* to the guest's management NIC.

        Raises:
            QemuError: QEMU refused, or the forward is still there afterwards.
            GuestGoneError: QEMU is not running.
        """
        answer = self.hmp(f"hostfwd_remove mgmt tcp:127.0.0.1:{host_port}").strip()
        if "removed" not in answer:  # HMP answers "host forwarding rule for ... removed"
            raise QemuError(f"{self.name}: removing the forward of host port {host_port}: {answer}")
        if host_port in self.host_forwards().values():
            raise QemuError(f"{self.name}: host port {host_port} still forwarded after hostfwd_remove")

    # -- serial console commands ------------------------------------------------------
    def console_run(self, command: str, timeout: float) -> tuple[int, str]:
        """Run *command* in the root shell on the guest's serial console (see the image's
        inittab); return its exit status and its output (stdout and stderr together).

        The output is framed by marker lines that the typed text itself never contains
        (they are made by ``printf``), so the console's echo of the command is skipped.

        Raises:
            CommandTimeout: no end marker within *timeout* seconds.
            GuestGoneError: QEMU is not running.
        """
        token = secrets.token_hex(6)
        deadline = time.monotonic() + timeout
        if not self._console_shell:
            # the shell starts after the ready mark; typing before it opened the port is lost
            probe = f"NETLAB-SHELL-{token}"
            while probe not in self.console_lines:
                self._check_console_alive(command, timeout, deadline, "")
                # no echo and no prompts: the console then shows only what commands print
                self.write_console(f"stty -echo; PS1=''; PS2=''; printf '%s\\n' NETLAB-SHELL-{token}\n")
                self._await_console(
                    lambda lines: probe in lines, min(deadline, time.monotonic() + 0.5)
                )
            self._console_shell = True
        begin, end = f"NETLAB-BEGIN-{token}", f"NETLAB-END-{token} "
        start = len(self.console_lines)
        self.write_console(
            # a subshell: `exit` or `cd` in the command must not touch the console's shell
            f"printf '%s\\n' NETLAB-BEGIN-{token}; ( {command}\n) < /dev/null 2>&1; "
            f"printf '\\nNETLAB-END-%s %d\\n' {token} $?\n"
        )
        if not self._await_console(
            lambda lines: any(line.startswith(end) for line in lines[start:]), deadline
        ):
            self._check_console_alive(command, timeout, deadline, "\n".join(self.console_lines[start:]))
        lines = self.console_lines[start:]
        done = next(line for line in lines if line.startswith(end))
        first = next((i + 1 for i, line in enumerate(lines) if line.endswith(begin)), 0)
        output = "".join(f"{line}\n" for line in lines[first:lines.index(done)])
        # the end mark starts on a new line of its own: drop that extra newline
        output = output[:-1] if output.endswith("\n") else output
        return int(done[len(end):].strip() or 255), output

    def _check_console_alive(self, command: str, timeout: float, deadline: float, output: str) -> None:
        if not self.is_running():
            raise GuestGoneError(f"{self.name}: QEMU exited during console command {command!r}")
        if time.monotonic() >= deadline:
            raise CommandTimeout(f"{self.name} (serial console)", command, timeout, output, "")

    # -- shutdown ---------------------------------------------------------------------
    def request_quit(self, timeout: float = 2.0) -> None:
        """Ask QEMU to quit over QMP without waiting for it to exit (see ``shutdown``)."""
        proc = self._proc
        if (self._closed or self._quit_sent or proc is None or proc.poll() is not None
                or self._qmp is None):
            return
        from qemu.qmp import QMPError

        try:
            self._qmp.settimeout(timeout)
            self._qmp.cmd("quit")
            self._quit_sent = True
        except (QMPError, OSError, TimeoutError, EOFError, RuntimeError) as exc:
            self.log.debug("QMP quit failed (%s); it will be killed", exc)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop QEMU: QMP ``quit``, then SIGKILL after *timeout*; release its sockets.

        Idempotent, and safe after QEMU died by itself. QMP is used from the thread
        that launched the machine only (its event loop lives there).
        """
        if self._closed:
            return
        self.request_quit(timeout)
        self._closed = True
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.log.warning("QEMU did not quit within %.1f s; killing it", timeout)
                proc.kill()
                proc.wait()
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception as exc:  # noqa: BLE001 - closing a dead socket must not mask the run
                self.log.debug("closing QMP: %s", exc)
            self._qmp = None
        if self._console_sock is not None:
            if self._reader is not None:
                self._reader.join(2.0)  # ends by itself: QEMU held the other end
            self._console_sock.close()
