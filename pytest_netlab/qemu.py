"""One QEMU process and everything it owns: its QMP and console sockets, its log files.

Launch, wait, QMP and shutdown are separate steps; ``shutdown()`` asks QMP ``quit``,
then kills, and is safe to call twice and after QEMU died by itself.

A machine belongs to the thread that launched it: QEMU runs with that thread's death
signal (see :func:`pytest_netlab.owner.die_with_parent`) and qemu.qmp's client runs its
event loop there. Given a *runner* (an executor whose one thread launches it), QMP calls
and the shutdown made from other threads are run by that thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .constants import NAT_HOST, Accelerator
from .errors import BootTimeout, CommandTimeout, ConfigError, GuestGoneError, QemuError, StateLoadError
from .guest_protocol import MGMT_MAC, MGMT_NET, ConsoleCommand, ConsoleMarks
from .nicmodels import DEFAULT_NIC_MODEL, NIC_MODELS
from .privileges import (
    ProcessPrivileges,
    QemuIdentity,
    check_readable,
    file_arg,
    qemu_identity,
    sandbox_option,
)
from .untrusted import DEFAULT_OUTPUT_LIMIT, printable

if TYPE_CHECKING:
    from qemu.qmp.legacy import QEMUMonitorProtocol

# qemu.qmp and pyroute2 (through .netns) are imported where a machine is launched or
# spoken to: finding QEMU and its version, as the pytest header does, needs neither

log = logging.getLogger(__name__)
_T = TypeVar("_T")

QEMU_BINARY = "qemu-system-x86_64"
#: seconds a QEMU whose QMP dropped while loading a state gets to exit (see _incoming_outcome)
INCOMING_EXIT_GRACE = 5.0
# what a guest's console may cost the host: lines kept in memory, and the longest line
# (output without newlines is cut into lines of this length)
CONSOLE_LINES_KEPT = 2000
CONSOLE_LINE_MAX = 4096
_USERNET_FWD = re.compile(
    r"TCP\[HOST_FORWARD\]\s+\d+\s+(?P<haddr>[\d.]+)\s+(?P<hport>\d+)\s+[\d.]+\s+(?P<gport>\d+)"
)


class _ExpectedDisconnect(logging.Filter):
    """On qemu.qmp's logger of one QMP nickname: while a machine of that name shuts
    down, what qemu.qmp reports (QEMU closing QMP after ``quit``, seen as "Task.Reader:
    ConnectionResetError") is expected, and goes out as DEBUG; at any other time
    its records keep their level."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.closing: set[int] = set()  # ids of the machines shutting down

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.closing or record.levelno <= logging.DEBUG:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return self.logger.isEnabledFor(logging.DEBUG)  # as if it had been logged at DEBUG

    @classmethod
    def on(cls, nickname: str) -> _ExpectedDisconnect:
        """The filter of qemu.qmp's logger for *nickname*, added on first use."""
        logger = logging.getLogger(f"qemu.qmp.protocol.{nickname}")
        with _expected_lock:
            found = next((f for f in logger.filters if isinstance(f, cls)), None)
            if found is None:
                found = cls(logger)
                logger.addFilter(found)
        return found


_expected_lock = threading.Lock()
def _split_lines(buffer: bytearray) -> list[bytes]:
    """Take the complete lines out of *buffer*, without their newlines; a line longer
    than :data:`CONSOLE_LINE_MAX` is cut into pieces of that length, so output without
    newlines does not grow the buffer."""
    lines: list[bytes] = []
    start = 0
    while True:
        end = buffer.find(b"\n", start, start + CONSOLE_LINE_MAX + 1)
        if end >= 0:
            lines.append(bytes(buffer[start:end]))
            start = end + 1
        elif len(buffer) - start > CONSOLE_LINE_MAX:
            lines.append(bytes(buffer[start:start + CONSOLE_LINE_MAX]))
            start += CONSOLE_LINE_MAX
        else:
            break
    del buffer[:start]
    return lines


def release_thread() -> None:
    """Close the asyncio event loop qemu.qmp's client made for this thread, if any: call
    it last in a thread that launched machines (see the module's docstring), once they
    are shut down."""
    import asyncio

    with contextlib.suppress(RuntimeError):  # no loop was made here
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if not loop.is_running() and not loop.is_closed():
            loop.close()
        asyncio.set_event_loop(None)


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


def option_value(text: str | Path) -> str:
    """*text* escaped for a QEMU option string (``file=...,if=virtio``): a ``,`` in a
    path would end the value and start an option of the path's choosing."""
    return str(text).replace(",", ",,")


def nat_netdev(netdev_id: str, host_ports: Sequence[int], outside: bool) -> str:
    """``-netdev user`` of a NAT NIC: restricted (the guest reaches nothing through it)
    unless *outside*; each of *host_ports* is ``NAT_HOST:port`` in the guest, relayed
    to the host's ``127.0.0.1:port`` (see :mod:`pytest_netlab.relay`)."""
    netdev = f"user,id={netdev_id}" + ("" if outside else ",restrict=on")
    for port in host_ports:
        command = shlex.join([*relay_command(), str(int(port))])
        netdev += f",guestfwd=tcp:{NAT_HOST}:{int(port)}-cmd:{option_value(command)}"
    return netdev


RELAY_ENV = "NETLAB_RELAY"


def relay_command() -> list[str]:
    """How QEMU runs the relay: a system Python runs the source QEMU has in its
    environment (:data:`RELAY_ENV`, see :func:`relay_environment`), so that QEMU's
    unprivileged user needs to read neither this package nor a virtualenv that may live
    in a directory it cannot enter (``/root``). (QEMU cuts a ``cmd:`` after about 1000
    characters: the source itself does not fit there.)"""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return [python, "-I", "-S", "-c", f"import os; exec(os.environ[{RELAY_ENV!r}])"]


@functools.cache
def relay_environment() -> dict[str, str]:
    """What QEMU's environment needs for :func:`relay_command`."""
    return {RELAY_ENV: Path(__file__).with_name("relay.py").read_text()}


def drive_file(drive: str) -> tuple[Path, str] | None:
    """The file of a ``-drive`` option that starts with ``file=`` (its ``,,`` unescaped),
    and the options after it (from the first ``,`` on); ``None`` for another option."""
    if not drive.startswith("file="):
        return None
    value, i, path = drive[len("file="):], 0, []
    while i < len(value) and not (value[i] == "," and value[i + 1:i + 2] != ","):
        path.append(value[i])
        i += 2 if value[i] == "," else 1
    return Path("".join(path)), value[i:]


@dataclass
class NicConfig:
    """One guest NIC on a TAP: the TAP's descriptors are handed to QEMU."""

    mac: str
    model: str = DEFAULT_NIC_MODEL
    fds: list[int] = field(default_factory=list)
    vectors: int | None = None
    nat: bool = False  # a user-mode (slirp) NAT NIC instead of a TAP: no fds
    host_ports: tuple[int, ...] = ()  # NAT only: host loopback ports the guest may reach
    outside: bool = False  # NAT only: unrestricted, the guest reaches everything the host does


@dataclass(frozen=True)
class FsShare:
    """A host directory given to the guest as a virtio-9p device with *tag*.

    ``security_model=mapped-xattr``: QEMU creates the guest's files as its own user (the
    running QEMU, see :mod:`pytest_netlab.privileges`) with host mode 0600/0700 and keeps
    the owner and mode the guest set in ``user.virtfs.*`` extended attributes, so a
    guest's root can plant no setuid file or device node on the host.
    """

    path: Path
    tag: str
    readonly: bool = True

    def argv(self, index: int, root: str | None = None) -> list[str]:
        """Its options; QEMU opens the directory as *root* if given (an inherited fd)."""
        path = option_value(root or self.path)  # QEMU's option syntax escapes ',' as ',,'
        fsdev = f"local,id=share{index},path={path},security_model=mapped-xattr"
        return ["-fsdev", fsdev + (",readonly=on" if self.readonly else ""),
                "-device", f"virtio-9p-pci,fsdev=share{index},mount_tag={self.tag}"]


@dataclass(frozen=True)
class MemoryFile:
    """Guest RAM in a file: *shared* (a template's, written through to the file) or
    private (a clone's copy-on-write mapping of a template's file, which QEMU opens
    read-write but never writes: ``MAP_PRIVATE``). QEMU's user must be allowed to read
    and write it (see :mod:`pytest_netlab.templates`)."""

    path: Path
    shared: bool

    def argv(self, size_mib: int, path: str | None = None) -> list[str]:
        """Its options; QEMU opens the file as *path* if given (an inherited fd)."""
        mem_path = option_value(path or self.path)
        return ["-object", f"memory-backend-file,id=ram0,mem-path={mem_path},size={size_mib}M,"
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
    accel: Accelerator = "tcg"
    nics: list[NicConfig] = field(default_factory=list)
    management: bool = True
    drives: list[str] = field(default_factory=list)
    incoming: Path | None = None  # a saved state to resume instead of booting
    numa: bool = False  # guest RAM from a memory backend, as one NUMA node
    shares: list[FsShare] = field(default_factory=list)  # host directories (virtio-9p)
    # RAM in a file, migrated without its pages (x-ignore-shared); not with numa
    memory_file: MemoryFile | None = None


class QemuMachine:
    """One running QEMU process.

    Attributes give the guest's last console lines as they arrive (``console_lines``,
    the last :data:`CONSOLE_LINES_KEPT`; ``console_seen`` counts all of them), what they
    said in the guest protocol's marks (``marks``, a
    :class:`~pytest_netlab.guest_protocol.ConsoleMarks` that every line is handed to: the
    host key to pin, readiness) and the path of its logs. ``console.log`` keeps at most
    *console_limit* bytes, then a note.
    """

    def __init__(
        self, config: MachineConfig, workdir: Path, *, console_limit: int = DEFAULT_OUTPUT_LIMIT,
        runner: Executor | None = None,
    ) -> None:
        self.config = config
        self.runner = runner  # the executor of the launching thread (see the module's docstring)
        self._thread: int | None = None  # the thread that launched it
        self.name = config.name
        self.workdir = workdir
        self.console_log = workdir / "console.log"
        self.qemu_log = workdir / "qemu.log"
        self.log = log.getChild(config.name)
        self.argv: list[str] = []
        self.marks = ConsoleMarks(self.log)  # the guest protocol reads the console lines
        self.console_limit = console_limit
        self.console_lines: deque[str] = deque(maxlen=CONSOLE_LINES_KEPT)
        self.console_seen = 0
        # notified for every console line and when the console closes: all waiting for
        # the guest's output goes through _await_console()
        self._console_changed = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._console_sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._closed = False
        self._quit_asked = False
        self._console_shell = False
        self.launched_at = 0.0
        self.identity: QemuIdentity | None = None  # who QEMU runs as (set by launch)
        self.privileges: ProcessPrivileges | None = None  # read from /proc once it runs
        self.files: dict[Path, int] = {}  # files QEMU inherits, by their descriptor in it

    # -- launch -----------------------------------------------------------------------
    def build_argv(self, qmp_fd: int, console_fd: int, files: Mapping[Path, int] | None = None) -> list[str]:
        """QEMU's command line; a file in *files* is given as the descriptor QEMU inherits."""
        c = self.config
        files = files or {}

        def path(file: Path) -> str:
            return file_arg(files[file]) if file in files else str(file)

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
            argv += c.memory_file.argv(c.memory_mib, path(c.memory_file.path))
        argv += [
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-sandbox", sandbox_option(spawn=any(nic.nat and nic.host_ports for nic in c.nics)),
            "-kernel", path(c.kernel), "-append", c.cmdline,
            "-chardev", f"socket,id=mon,fd={qmp_fd}", "-mon", "chardev=mon,mode=control",
            "-chardev", f"socket,id=con,fd={console_fd}", "-serial", "chardev:con",
        ]
        if c.initrd is not None:
            argv += ["-initrd", path(c.initrd)]
        for i, nic in enumerate(c.nics):
            if nic.nat:
                # QEMU's defaults: 10.0.2.0/24, DHCP, gateway 10.0.2.2
                argv += ["-netdev", nat_netdev(f"lab{i}", nic.host_ports, nic.outside)]
            elif len(nic.fds) > 1:
                argv += ["-netdev", f"tap,id=lab{i},fds={':'.join(map(str, nic.fds))},vhost=off"]
            else:
                argv += ["-netdev", f"tap,id=lab{i},fd={nic.fds[0]},vhost=off"]
            device = f"{nic.model},netdev=lab{i},mac={nic.mac},romfile="
            if NIC_MODELS[nic.model].multiqueue and len(nic.fds) > 1:
                vectors = nic.vectors if nic.vectors is not None else 2 * len(nic.fds) + 2
                device += f",mq=on,vectors={vectors}"
            argv += ["-device", device]
        if c.management:
            argv += [
                # ipv6=off: no router advertisements, so no IPv6 route or address on mgmt0
                # beside link-local (lab IPv6 traffic must not leave through it)
                "-netdev",
                f"user,id=mgmt,net={MGMT_NET},ipv6=off,restrict=on,hostfwd=tcp:127.0.0.1:0-:22",
                "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC},romfile=",
            ]
        for drive in c.drives:
            disk = drive_file(drive)
            inherited = f"file={option_value(path(disk[0]))}{disk[1]}" if disk and disk[0] in files else None
            argv += ["-drive", inherited or drive]
        for i, fs in enumerate(c.shares):
            # a directory's /proc/self/fd link, with '/': QEMU wants a directory, not a link
            argv += fs.argv(i, f"/proc/self/fd/{files[fs.path]}/" if fs.path in files else None)
        # a new generation id on every start: a resumed Linux guest with a vmgenid driver
        # reseeds its RNG (the Debian cloud kernel has none; images/init reseeds it anyway)
        argv += ["-device", "vmgenid,guid=auto"]
        if c.incoming is not None:
            # started over QMP once MIGRATION events are on (see launch): events sent
            # while QMP is being negotiated would break the handshake
            argv += ["-incoming", "defer"]
        return argv

    def launch(self) -> None:
        """Start QEMU, as an unprivileged user in its sandbox (see
        :mod:`pytest_netlab.privileges`). Call from the thread that owns the lab (see
        ``die_with_parent``).

        Raises:
            ConfigError: no unprivileged user for QEMU, or a file it needs that user
                may not read.
            QemuError: QEMU could not be started, or runs with privileges.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.get_ident()
        try:
            self.identity = qemu_identity()
            files = self._open_files(self.identity)
        except BaseException:
            self._close_taps()
            raise
        self.files = files  # the numbers stay QEMU's after ours are closed
        qmp_ours, qmp_theirs = socket.socketpair()
        con_ours, con_theirs = socket.socketpair()
        tap_fds = [fd for nic in self.config.nics for fd in nic.fds]
        from qemu.qmp import QMPError
        from qemu.qmp.legacy import QEMUMonitorProtocol

        from .owner import die_with_parent, owner_environment

        self.argv = self.build_argv(qmp_theirs.fileno(), con_theirs.fileno(), self.files)
        self.log.debug("launch as %s: %s", self.identity.describe(), shlex.join(self.argv))
        if any(nic.nat and nic.host_ports for nic in self.config.nics):
            self.log.info("its QEMU may start programs (the relay of NAT host ports): sandbox %s",
                          sandbox_option(spawn=True))
        try:
            with open(self.qemu_log, "wb") as out:
                self._proc = subprocess.Popen(
                    die_with_parent(self.argv, self.identity), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=[qmp_theirs.fileno(), con_theirs.fileno(), *tap_fds, *self.files.values()],
                    env=self._environment(owner_environment()), cwd="/",
                )
        except OSError as exc:
            qmp_ours.close()
            con_ours.close()
            raise QemuError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc
        finally:
            qmp_theirs.close()
            con_theirs.close()
            # QEMU holds the TAPs and files now: they vanish with it, however it ends
            self._close_taps()
            for fd in files.values():
                os.close(fd)
        self.launched_at = time.monotonic()
        (self.workdir / "qemu.pid").write_text(f"{self._proc.pid}\n")
        (self.workdir / "cmdline").write_text(shlex.join(self.argv) + "\n" + self._files_note() + "\n")
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
        self._check_privileges()
        if self.config.incoming is not None:
            self._migration_capabilities()
            # QEMU inherited the state file: its number is the descriptor to read from
            self.qmp("migrate-incoming", uri=f"fd:{self.files[self.config.incoming]}")

    def _open_files(self, identity: QemuIdentity) -> dict[Path, int]:
        """Open what QEMU reads from the host (QEMU inherits the descriptors): kernel,
        initrd, disks, shared directories and the RAM file, which QEMU reopens through
        ``/dev/fd`` (so their permission bits must let *identity* in), and the saved
        state, which QEMU reads from the descriptor itself.

        Raises:
            ConfigError: *identity* may not read one of them.
        """
        c = self.config
        wanted: list[tuple[Path, str, bool]] = [(c.kernel, "kernel", False)]
        if c.initrd is not None:
            wanted.append((c.initrd, "initrd", False))
        for drive in c.drives:
            disk = drive_file(drive)
            if disk is not None:
                wanted.append((disk[0], "disk", False))
        wanted += [(fs.path, "shared directory", not fs.readonly) for fs in c.shares]
        if c.memory_file is not None:  # QEMU opens it read-write, even to map it private
            wanted.append((c.memory_file.path, "RAM file", True))
        files: dict[Path, int] = {}
        try:
            for file, what, write in wanted:
                if file in files:
                    continue
                check_readable(identity, file, f"{self.name}: {what}", write=write)
                directory = os.O_DIRECTORY if file.is_dir() else 0
                files[file] = os.open(file, os.O_RDONLY | directory | os.O_CLOEXEC)
            if c.incoming is not None:
                files[c.incoming] = os.open(c.incoming, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            for fd in files.values():
                os.close(fd)
            raise ConfigError(f"{self.name}: cannot open {exc.filename}: {exc.strerror}") from exc
        except BaseException:
            for fd in files.values():
                os.close(fd)
            raise
        return files

    def _environment(self, base: dict[str, str]) -> dict[str, str]:
        """QEMU's environment: *base*, and the relay's source if a NAT NIC needs it."""
        if any(nic.nat and nic.host_ports for nic in self.config.nics):
            return {**base, **relay_environment()}
        return base

    def _files_note(self) -> str:
        """Which file each ``/dev/fd/N`` of the command line is."""
        return "# files: " + (", ".join(f"{fd}={file}" for file, fd in self.files.items()) or "none")

    def _close_taps(self) -> None:
        for nic in self.config.nics:
            for fd in nic.fds:
                os.close(fd)
            nic.fds = []

    def _check_privileges(self) -> None:
        """Refuse a QEMU that runs as root, without its sandbox or with capabilities.

        Raises:
            QemuError: it does (it is stopped).
        """
        assert self._proc is not None
        self.privileges = ProcessPrivileges.of(self._proc.pid)
        problems = self.privileges.problems() if self.privileges is not None else []
        if problems:
            self.shutdown()
            raise QemuError(f"{self.name}: QEMU (pid {self._proc.pid}) {'; '.join(problems)}: refused")

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
        buffer = bytearray()
        written = 0
        with open(self.console_log, "wb") as out:
            while True:
                try:
                    data = self._console_sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                written = self._log_console(out, data, written)
                buffer += data
                for raw in _split_lines(buffer):
                    self._console_line(raw.decode(errors="replace").rstrip("\r"))
        if buffer:
            self._console_line(buffer.decode(errors="replace"))
        with self._console_changed:  # QEMU is gone: waiters need not wait out their time
            self._console_changed.notify_all()

    def _log_console(self, out: Any, data: bytes, written: int) -> int:
        """Append *data* to ``console.log`` up to ``console_limit`` bytes, then a note
        once; return the bytes written so far (past the limit: counted, not written)."""
        limit = self.console_limit
        if written < limit:
            out.write(data[:limit - written])
        if written <= limit < written + len(data):  # the first byte past the limit
            out.write(
                f"\n[netlab: console.log reached its limit of {limit} bytes; "
                "later console output is not kept in this file]\n".encode()
            )
            self.log.warning("console.log reached its limit of %d bytes", limit)
        out.flush()  # nothing to do once past the limit
        return written + len(data)

    def _console_line(self, line: str) -> None:
        self.log.debug("console: %s", printable(line))
        with self._console_changed:
            self.console_lines.append(line)
            self.console_seen += 1
            self.marks.feed(line)
            self._console_changed.notify_all()

    def _console_shows(self, line: str) -> bool:
        """Whether *line* is among the console lines kept (read under the lock: the
        reader thread appends to them)."""
        with self._console_changed:
            return line in self.console_lines

    def console_since(self, seen: int) -> list[str]:
        """The console lines that came after the first *seen* ones (as counted by
        ``console_seen``), as far as they are still kept; a first line says how many
        were dropped."""
        with self._console_changed:
            lines = list(self.console_lines)
            new = self.console_seen - seen
        if new <= len(lines):
            return lines[len(lines) - new:] if new > 0 else []
        return [f"[... {new - len(lines)} console lines dropped]", *lines]

    def _await_console(self, found: Callable[[deque[str]], bool], deadline: float) -> bool:
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

    def kill(self) -> None:
        """SIGKILL QEMU, from any thread, without QMP: for a guest whose thread is busy
        bringing it up when the lab must go (its waits then end at once)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exitcode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def console_tail(self, lines: int = 30) -> str:
        """The last *lines* console lines, to show: prefixed, control characters escaped."""
        with self._console_changed:
            tail = list(self.console_lines)[-lines:]
        return "\n".join(f"  {self.name}| {printable(line)}" for line in tail) or "  (no console output)"

    def _died_error(self, what: str) -> QemuError:
        output = self.qemu_log.read_text(errors="replace").strip() if self.qemu_log.exists() else ""
        return QemuError(
            f"{self.name}: {what}; QEMU exit status {self.exitcode()}\n"
            f"command: {shlex.join(self.argv)}\n{self._files_note()}\n"
            f"QEMU output:\n{output or '(none)'}\n"
            f"console (last lines):\n{self.console_tail()}"
        )

    def wait_ready(self, timeout: float, since: float | None = None) -> None:
        """Wait until the guest protocol's marks say the guest is ready (its SSH server
        is listening) and gave its host key, at most *timeout* seconds from *since* (a
        ``time.monotonic()`` value; now if not given).

        Raises:
            QemuError: QEMU exited first.
            BootTimeout: no ready mark within *timeout* seconds.
        """
        deadline = (time.monotonic() if since is None else since) + timeout
        if not self._await_console(lambda _: self.marks.ready, deadline):
            if not self.is_running():
                raise self._died_error("QEMU exited before the guest was ready")
            raise BootTimeout(
                f"{self.name}: guest did not print {self.marks.ready_mark} (its SSH server is "
                f"listening) within {timeout:g} s (accelerator {self.config.accel}; "
                "raise it with --netlab-boot-timeout or the netlab_boot_timeout ini value); "
                f"console log {self.console_log}, last lines:\n{self.console_tail()}"
            )
        if self.marks.host_key is None:
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
        except QemuError as exc:  # GuestGoneError too: QMP failed or QEMU is gone
            status = self._incoming_outcome(exc)
        if status != "completed":
            error = self._died_error(f"loading the saved state {self.config.incoming}: {status}")
            if status == "failed":  # QEMU read the file and refused it
                raise StateLoadError(str(error))
            raise error
        self.qmp("cont")

    def _incoming_outcome(self, exc: QemuError) -> str:
        """What happened to the incoming state when QMP failed while it loaded.

        QEMU refuses a damaged state by exiting, and its QMP connection may drop before
        the process is seen to exit: whichever is noticed first, wait briefly for the
        exit, then decide from QEMU's exit status and log. Returns "failed" (QEMU refused
        the state); otherwise raises *exc* (QEMU still runs: a real QMP failure) or the
        error of a QEMU that died for another reason.
        """
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=INCOMING_EXIT_GRACE)
        if self.is_running():
            raise exc
        log_text = self.qemu_log.read_text(errors="replace") if self.qemu_log.exists() else ""
        if self.exitcode() != 0 and "load of migration failed" in log_text:
            return "failed"
        raise self._died_error(f"loading the saved state {self.config.incoming}: QEMU exited") from exc

    def save_state(self, path: Path, timeout: float = 60.0) -> None:
        """Pause the guest and write its whole state to *path* (for ``incoming``).

        The file is opened here and handed to QEMU over QMP (``getfd``): QEMU's user
        need not reach *path*, and its sandbox forbids starting a program to write it.
        """
        self.qmp("stop")
        self._migration_capabilities()
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            assert self._qmp is not None
            self._qmp.send_fd_scm(fd)  # goes with the next command
            self.qmp("getfd", fdname="state")
        finally:
            os.close(fd)  # QEMU has its own copy now, closed when the migration ends
        self.qmp("migrate", uri="fd:state")
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
        return self._in_own_thread(lambda: self._qmp_command(command, arguments))

    def _in_own_thread(self, func: Callable[[], _T]) -> _T:
        """*func*'s result, run by the launching thread when it has a runner."""
        if self.runner is None or self._thread in (None, threading.get_ident()):
            return func()
        try:
            future = self.runner.submit(func)
        except RuntimeError:  # the runner is shut down (the interpreter exits): its thread is gone
            return func()
        return future.result()

    def _qmp_command(self, command: str, arguments: dict[str, Any]) -> Any:
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
        """Run *command* in the root shell on the guest's serial console; return its
        exit status and its output (stdout and stderr together). What is typed and how
        the output is framed is the guest protocol's console shell
        (:class:`~pytest_netlab.guest_protocol.ConsoleCommand`).

        Raises:
            CommandTimeout: no end marker within *timeout* seconds.
            GuestGoneError: QEMU is not running.
        """
        run = ConsoleCommand(command)
        deadline = time.monotonic() + timeout
        if not self._console_shell:
            while not self._console_shows(run.shell_ready):
                self._check_console_alive(command, timeout, deadline, "")
                self.write_console(run.shell_setup)
                self._await_console(
                    lambda lines: run.shell_ready in lines, min(deadline, time.monotonic() + 0.5)
                )
            self._console_shell = True
        start = self.console_seen
        self.write_console(run.typed)
        if not self._await_console(lambda _: run.finished(self.console_since(start)), deadline):
            self._check_console_alive(command, timeout, deadline, "\n".join(self.console_since(start)))
        return run.result(self.console_since(start))

    def _check_console_alive(self, command: str, timeout: float, deadline: float, output: str) -> None:
        if not self.is_running():
            raise GuestGoneError(f"{self.name}: QEMU exited during console command {command!r}")
        if time.monotonic() >= deadline:
            raise CommandTimeout(f"{self.name} (serial console)", command, timeout, output, "")

    # -- shutdown ---------------------------------------------------------------------
    def request_quit(self, timeout: float = 2.0) -> None:
        """Ask QEMU to quit over QMP without waiting for it to exit (see ``shutdown``).

        Asked once: QEMU closes QMP after answering, so a second ``quit`` (``shutdown`` after
        a lab asked every guest first) would only wait out *timeout* unanswered.
        """
        self._in_own_thread(lambda: self._request_quit(timeout))

    def _request_quit(self, timeout: float) -> None:
        proc = self._proc
        if self._closed or self._quit_asked or proc is None or proc.poll() is not None or self._qmp is None:
            return
        from qemu.qmp import QMPError

        # once: a second quit that QEMU exits without reading resets the connection
        self._quit_asked = True
        _ExpectedDisconnect.on(self.name).closing.add(id(self))  # QEMU hangs up after quit
        try:
            self._qmp.settimeout(timeout)
            self._qmp.cmd("quit")
        except (QMPError, OSError, TimeoutError, EOFError, RuntimeError) as exc:
            self.log.debug("QMP quit failed (%s); it will be killed", exc)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop QEMU: QMP ``quit``, then SIGKILL after *timeout*; release its sockets.

        Idempotent, and safe after QEMU died by itself. QMP is used from the thread
        that launched the machine only (its event loop lives there): from another
        thread, the shutdown is run by the machine's runner.
        """
        if self._closed:
            return
        self._in_own_thread(lambda: self._shutdown_once(timeout))

    def _shutdown_once(self, timeout: float) -> None:
        if self._closed:
            return
        expected = _ExpectedDisconnect.on(self.name)
        expected.closing.add(id(self))  # also when QEMU is gone already: nothing to quit
        try:
            self._shutdown(timeout)
        finally:
            expected.closing.discard(id(self))

    def _shutdown(self, timeout: float) -> None:
        self._request_quit(timeout)
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
