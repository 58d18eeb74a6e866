"""A guest of a lab: a QEMU machine with NICs on the lab's bridges, and what a test does
with it (commands over SSH, ping, files, links, impairment, forwarded ports).

:class:`VM` and :class:`Router` are made by :meth:`pytest_netlab.lab.Lab.vm` and
:meth:`~pytest_netlab.lab.Lab.router`; the lab owns them and tears them down.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import validation
from .bridge import Bridge
from .errors import CommandError, ConfigError, GuestGoneError, LabError
from .guest_protocol import guest_ifindex, guest_ifname
from .impairment import Impairment, Where
from .netns import host_has_qdisc
from .ping import PingResult, parse_ping
from .qemu import QemuMachine
from .retry import retry_until
from .ssh import DEFAULT_GET_LIMIT, CommandResult, SSHSession
from .topology import GuestSpec
from .traffic import IperfResult, parse_iperf

if TYPE_CHECKING:
    from .labcontext import LabContext

log = logging.getLogger(__name__)

#: where :meth:`VM.daemon` writes each daemon's output in the guest (kept as evidence)
DAEMON_LOG_DIR = "/var/log/netlab"


def _local_path(local: object) -> Path:
    if not isinstance(local, (str, os.PathLike)) or not str(local):
        raise ConfigError(f"local path {local!r} is not accepted: give a str or a pathlib.Path")
    return Path(local)


def _check_remote_path(remote: object) -> None:
    if not isinstance(remote, str) or not remote or "\0" in remote:
        raise ConfigError(
            f"remote path {remote!r} is not accepted: give a path in the guest, e.g. '/tmp/file'"
        )


class VM:
    """A guest of the lab. Usable once ``lab.start()`` has returned."""

    def __init__(self, context: LabContext, spec: GuestSpec, macs: list[str], taps: list[str]) -> None:
        self.context = context  # its lab, as much as a guest needs
        self.spec = spec
        self.name = spec.name
        self.macs = macs
        self.taps = taps
        self.machine: QemuMachine | None = None
        self._ssh: SSHSession | None = None
        self._console_ready = False  # a guest without network: booted, console only
        self.impairments: dict[int, Impairment] = {}
        self._impaired_at: dict[int, str] = {}  # NIC index -> "tap" or "guest", as set now
        self.log = log.getChild(spec.name)
        self._testinfra: Any = None  # the testinfra Host, made at first use

    # -- state ------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._ssh is not None or self._console_ready

    # the transitions of bringing a guest up (pytest_netlab.bringup) and down (Lab.close)
    def attach(self, machine: QemuMachine) -> None:
        """*machine* is the guest's QEMU from now on (launched, or launched again)."""
        self.machine = machine

    def connected(self, session: SSHSession) -> None:
        """SSH answers: the guest is started, its session is *session*."""
        self._ssh = session

    def console_only(self) -> None:
        """A guest without network is started once ready: the serial console is its channel."""
        self._console_ready = True

    def apply_impairments(self) -> None:
        """Set every impairment asked for so far (before the test's first command)."""
        for index, impairment in self.impairments.items():
            if not impairment.none:
                self._apply_impairment(index, impairment)

    def disconnect(self) -> None:
        """Close the SSH session, if any (the lab is closing)."""
        if self._ssh is not None:
            self._ssh.close()

    @property
    def connected_by_ssh(self) -> bool:
        return self._ssh is not None

    @property
    def console_log(self) -> Path:
        return self.context.workdir / self.name / "console.log"

    def _session(self) -> SSHSession:
        if not self.spec.network:
            raise LabError(
                f"{self.name} has no network (network=False), so no SSH: use vm.console_run()"
            )
        if self._ssh is None or self.machine is None:
            raise LabError(f"{self.name}: the guest is not started; call netlab.start() first")
        if not self.machine.is_running():
            raise GuestGoneError(
                f"{self.name}: the guest's QEMU is not running any more (exit status "
                f"{self.machine.exitcode()}); console log {self.console_log}, last lines:\n"
                f"{self.machine.console_tail(15)}"
            )
        return self._ssh

    @property
    def history(self) -> list[Any]:
        """The commands run in this guest, in order, with status and duration."""
        return list(self._ssh.history) if self._ssh else []

    def forget_last_commands(self, count: int) -> None:
        """Drop the last *count* entries of the history (commands the plugin ran for
        its own purposes, e.g. to capture evidence, are not the test's)."""
        if self._ssh is not None and count > 0:
            del self._ssh.history[-count:]

    @property
    def testinfra(self) -> Any:
        """A pytest-testinfra ``Host`` for this guest (the ``[testinfra]`` extra), over
        SSH with the lab's ``ssh_config`` and the guest's host key pinned; made once::

            assert h1.testinfra.file("/etc/hostname").content_string == "h1\\n"

        Raises:
            ConfigError: pytest-testinfra is not installed.
            LabError: the guest is not started or has no network.
        """
        if self._testinfra is None:
            from .infra import testinfra_host

            self._testinfra = testinfra_host(self)
        return self._testinfra

    # -- commands ---------------------------------------------------------------------
    def ssh(
        self, command: str, *, check: bool = True, timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> CommandResult:
        """Run *command* (a shell command line, as written) in the guest as root.

        Raises:
            CommandError: with ``check=True``, the command exited non-zero.
            CommandTimeout: it did not finish within *timeout* seconds.
            GuestGoneError: the guest is not running.
            SSHError: the SSH connection broke.
        """
        session = self._session()
        result = session.run(
            command, timeout=timeout or self.context.settings.command_timeout, stdin=stdin
        )
        if check:
            result.check()
        return result

    def ping(
        self, destination: str, *, count: int = 1, timeout: float = 2.0,
        interval: float = 0.2, interface: str | None = None, size: int | None = None,
        dont_fragment: bool = False,
    ) -> PingResult:
        """Ping *destination* from the guest; the result is truthy if a reply came back.

        *timeout* is how long to wait for a reply after the last request.

        Raises:
            ConfigError: a malformed destination, interface or count.
        """
        dest = _host_or_address(destination)
        validation.int_in_range(count, 1, 100000, what="ping count")
        validation.positive_seconds(timeout, "ping timeout")
        argv = ["ping", "-n", "-c", str(count), "-W", f"{timeout:g}"]
        if count > 1:
            argv += ["-i", f"{validation.positive_seconds(interval, 'ping interval'):g}"]
        if interface is not None:
            argv += ["-I", validation.interface_name(interface)]
        if size is not None:
            argv += ["-s", str(validation.int_in_range(size, 0, 65507, what="ping size"))]
        if dont_fragment:
            argv += ["-M", "do"]
        if ":" in dest:
            argv.insert(1, "-6")
        argv.append(dest)
        deadline = (count - 1) * interval + timeout + 30
        result = self.ssh(shlex.join(argv), check=False, timeout=deadline)
        return parse_ping(dest, result.stdout + result.stderr, result.status)

    def console_run(self, command: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        """Run *command* in a root shell on the guest's serial console, not over the
        network: the command channel of a guest made with ``network=False``. Works on
        any started guest. stdout and stderr come back together, as ``stdout``.

        Raises:
            CommandError: with ``check=True``, the command exited non-zero.
            CommandTimeout: it did not finish within *timeout* seconds.
            GuestGoneError: the guest is not running.
            LabError: the guest is not started.
        """
        if self.machine is None or not self.started:
            raise LabError(f"{self.name}: the guest is not started; call netlab.start() first")
        started = time.monotonic()
        status, output = self.machine.console_run(command, timeout or self.context.settings.command_timeout)
        result = CommandResult(command, status, output, "", time.monotonic() - started, self.name)
        self.log.debug("console: %s -> %d", command, status)
        if check:
            result.check()
        return result

    def forward_port(self, guest_port: int) -> int:
        """Forward a new port on the host's 127.0.0.1 (chosen by the kernel) to TCP
        *guest_port* of the guest (through its management NIC, like the SSH port);
        return the host port. ``netlab.vm(..., forwards=[80])`` does this at start.

        Raises:
            ConfigError: a port out of range, or a guest without network.
            LabError: the guest is not started.
            QemuError: QEMU refused the forward.
        """
        validation.int_in_range(guest_port, 1, 65535, what="guest port")
        if not self.spec.network:
            raise ConfigError(f"{self.name} has no network (network=False): no port can be forwarded to it")
        if self.machine is None:
            raise LabError(f"{self.name}: the guest is not started; call netlab.start() first")
        forwards = self.machine.host_forwards()
        if guest_port in forwards:
            return forwards[guest_port]
        port = self.machine.add_host_forward(guest_port)
        self.log.info("guest port %d forwarded from 127.0.0.1:%d", guest_port, port)
        return port

    def remove_forward(self, guest_port: int | None = None, *, host_port: int | None = None) -> None:
        """Remove a forward made by :meth:`forward_port`, named by its *guest_port* or by
        its *host_port* (exactly one); the host port no longer accepts connections.

        Raises:
            ConfigError: neither or both given, a port out of range, no such forward, or
                the SSH port (the lab's own channel to the guest).
            LabError: the guest is not started.
            QemuError: QEMU refused to remove it.
        """
        if (guest_port is None) == (host_port is None):
            raise ConfigError(
                f"{self.name}.remove_forward(guest_port={guest_port!r}, host_port={host_port!r}): "
                "give exactly one of guest_port and host_port"
            )
        if self.machine is None:
            raise LabError(f"{self.name}: the guest is not started; call netlab.start() first")
        forwards = self.machine.host_forwards()  # guest port -> host port
        if guest_port is not None:
            validation.int_in_range(guest_port, 1, 65535, what="guest port")
            found = forwards.get(guest_port)
            what = f"guest port {guest_port}"
        else:
            validation.int_in_range(host_port, 1, 65535, what="host port")
            found = host_port if host_port in forwards.values() else None
            what = f"host port {host_port}"
        listing = ", ".join(f"{h} -> {g}" for g, h in sorted(forwards.items())) or "none"
        if found is None:
            raise ConfigError(f"{self.name}: {what} is not forwarded; forwards (host -> guest): {listing}")
        if found == forwards.get(22):
            raise ConfigError(
                f"{self.name}: {what} is the SSH forward the lab uses to reach the guest; "
                "it cannot be removed"
            )
        self.machine.remove_host_forward(found)
        self.log.info("forward from 127.0.0.1:%d removed (%s)", found, what)

    def host_port(self, guest_port: int = 22) -> int:
        """The port on 127.0.0.1 of the host that is forwarded to *guest_port* of the guest.

        Raises:
            LabError: no such forward.
        """
        if self.machine is None:
            raise LabError(f"{self.name}: the guest is not started; call netlab.start() first")
        if not self.spec.network:
            raise LabError(f"{self.name} has no network (network=False): no port is forwarded")
        forwards = self.machine.host_forwards()
        if guest_port not in forwards:
            raise LabError(
                f"{self.name}: guest port {guest_port} is not forwarded; "
                f"forwarded guest ports: {sorted(forwards) or 'none'}"
            )
        return forwards[guest_port]

    # -- waiting ----------------------------------------------------------------------
    def wait_until(
        self, condition: str | Callable[[], object], *, timeout: float = 30.0, interval: float = 0.5,
    ) -> str:
        """Retry *condition* until it succeeds: a shell command that exits 0, or a
        callable that returns a true value (an ``AssertionError`` or ``CommandError``
        it raises counts as "not yet"). Returns the output of the successful attempt.

        Raises:
            WaitTimeout: not within *timeout* seconds; it has the last attempt's output.
            ConfigError: a bad timeout or interval.
        """
        return self._wait(condition, True, timeout, interval)

    def wait_until_fails(
        self, condition: str | Callable[[], object], *, timeout: float = 30.0, interval: float = 0.5,
    ) -> str:
        """Retry until *condition* fails (the command exits non-zero, the callable
        returns a false value or raises ``AssertionError``/``CommandError``).

        Raises:
            WaitTimeout: it still succeeded after *timeout* seconds.
            ConfigError: a bad timeout or interval.
        """
        return self._wait(condition, False, timeout, interval)

    def _wait(
        self, condition: str | Callable[[], object], want: bool, timeout: float, interval: float
    ) -> str:
        if isinstance(condition, str):
            what = f"{self.name}: {condition!r} {'succeeds' if want else 'fails'}"

            def attempt(left: float) -> tuple[bool, str]:
                try:
                    result = self.ssh(condition, check=False, timeout=max(left, 1.0))
                except CommandError as exc:  # a timed-out command has not succeeded
                    return (not want), str(exc)
                seen = (
                    f"exit status {result.status}\n--- stdout ---\n{result.stdout}"
                    f"--- stderr ---\n{result.stderr}"
                )
                return result.ok == want, seen
        elif callable(condition):
            name = getattr(condition, "__name__", repr(condition))
            what = f"{self.name}: {name}() {'is true' if want else 'is false'}"

            def attempt(left: float) -> tuple[bool, str]:
                try:
                    value = condition()
                except (AssertionError, CommandError) as exc:
                    return (not want), f"{type(exc).__name__}: {exc}"
                return bool(value) == want, f"returned {value!r}"
        else:
            raise ConfigError(
                f"condition {condition!r} is not accepted: give a shell command (str) or a callable"
            )
        return retry_until(attempt, timeout=timeout, interval=interval, what=what)

    # -- daemons ----------------------------------------------------------------------
    def daemon(self, command: str, *, name: str) -> int:
        """Start *command* (a shell command line that stays in the foreground, e.g.
        ``"iperf3 -s"`` or ``"bird -f -c /etc/bird/bird.conf"``) in the guest, in a
        session of its own (``setsid``) so that it outlives the SSH command; its output
        goes to ``/var/log/netlab/NAME.log`` in the guest, which the evidence of a failed
        test includes. Returns its process id, which is also its process group's: the
        group stops with the guest at teardown, or earlier with :meth:`stop_daemon`.

        Raises:
            ConfigError: *name* is not a plain file name, or one running already.
            CommandError: the guest could not start it.
        """
        _check_daemon_name(name)
        logfile, pidfile = f"{DAEMON_LOG_DIR}/{name}.log", f"/run/netlab/{name}.pid"
        result = self.ssh(
            f"mkdir -p {DAEMON_LOG_DIR} /run/netlab; "
            f"if [ -f {pidfile} ] && kill -0 $(cat {pidfile}) 2>/dev/null; then exit 17; fi; "
            f"setsid sh -c {shlex.quote(command)} </dev/null >{logfile} 2>&1 & "
            f"echo $! > {pidfile}; echo $!",
            check=False,
        )
        if result.status == 17:
            raise ConfigError(f"{self.name}: a daemon named {name!r} runs already: give each its own name")
        result.check()
        pid = int(result.stdout.split()[-1])
        self.log.info("daemon %s started (pid %d): %s", name, pid, command)
        return pid

    def stop_daemon(self, name: str, *, timeout: float = 10.0) -> None:
        """Stop the daemon *name* started by :meth:`daemon`, with every process of its
        group (SIGTERM, then SIGKILL after *timeout* seconds); return once all are gone.

        Raises:
            ConfigError: no daemon of that name was started.
        """
        _check_daemon_name(name)
        pidfile = f"/run/netlab/{name}.pid"
        result = self.ssh(f"cat {pidfile}", check=False)
        if not result.ok:
            raise ConfigError(f"{self.name}: no daemon named {name!r} was started with vm.daemon()")
        pid = int(result.stdout.strip())
        self.ssh(
            f"kill -TERM -{pid} 2>/dev/null; i=0; while kill -0 -{pid} 2>/dev/null; do "
            f"i=$((i+1)); [ $i -gt {int(timeout * 20)} ] && kill -KILL -{pid}; sleep 0.05; done; "
            f"rm -f {pidfile}",
            timeout=timeout + 10,
        )

    # -- files ------------------------------------------------------------------------
    def put(self, local: str | Path, remote: str, *, mode: int | None = None, timeout: float = 60.0) -> None:
        """Copy the local file *local* to path *remote* in the guest (over SFTP, on the
        guest's SSH connection) within *timeout* seconds; with *mode* (e.g. ``0o600``)
        the file has that mode before its first byte is written.

        Raises:
            ConfigError: *local* or *remote* is not a path, or *mode* is not a file mode.
            TransferError: *local* cannot be read, or the guest cannot write *remote*
                (the message names the path); a :class:`CommandError`.
            SSHError: the connection is gone.
        """
        _check_remote_path(remote)
        if mode is not None and (
            isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777
        ):
            raise ConfigError(
                f"mode {mode!r} is not accepted: give a file mode from 0o0 to 0o7777, e.g. 0o644"
            )
        self._session().put_file(_local_path(local), remote, mode=mode, timeout=timeout)

    def get(
        self, remote: str, local: str | Path, *, timeout: float = 60.0, max_bytes: int = DEFAULT_GET_LIMIT,
    ) -> Path:
        """Copy the guest's file *remote* to *local* (a file path; over SFTP); return *local*.
        The whole copy must take at most *timeout* seconds and *max_bytes* bytes (1 GiB
        unless given): a guest's file may be endless, and the size it reports is not
        trusted. A copy that fails leaves no *local* file.

        Raises:
            ConfigError: *remote* or *local* is not a path, or *max_bytes* is not a
                positive number.
            TransferError: the guest cannot read *remote*, it is larger than
                *max_bytes*, the copy took longer than *timeout*, or *local* cannot be
                written (e.g. its directory does not exist); the message names the path.
            SSHError: the connection is gone.
        """
        _check_remote_path(remote)
        path = _local_path(local)
        validation.int_in_range(max_bytes, 1, 2**63 - 1, what="max_bytes")
        self._session().get_file(remote, path, timeout=timeout, max_bytes=max_bytes)
        return path

    # -- links ------------------------------------------------------------------------
    def nic_index(self, nic: Bridge | int | str) -> int:
        """The ``ethN`` number of a lab NIC (one on a bridge) given as a bridge, a
        bridge's name, an index, ``ethN`` or its TAP name.

        Raises:
            ConfigError: no such NIC, or a NAT NIC.
        """
        index = self._nic_position(nic)
        if self.spec.nics[index].bridge is None:
            raise ConfigError(
                f"NIC {nic!r} of {self.name!r} is its NAT NIC ({guest_ifname(index)}), not on a lab bridge: "
                "give one of its lab NICs"
            )
        return index

    def _tap(self, index: int) -> str:
        """The TAP of lab NIC ``eth<index>`` (NAT NICs have none)."""
        return self.taps[sum(1 for n in self.spec.nics[:index] if n.bridge is not None)]

    # -- addresses --------------------------------------------------------------------
    @property
    def addresses(self) -> dict[str, list[str]]:
        """The addresses the lab gave this guest at start, by interface:
        ``{"eth0": ["10.20.10.2/24"]}`` (only NICs with addresses; see
        :mod:`pytest_netlab.addressing` for how they are chosen).

        Raises:
            LabError: the guest is not started (addresses are chosen at start).
        """
        if not self.started:
            raise LabError(f"{self.name}: addresses are chosen at netlab.start(); call it first")
        nics = self.context.plan.assigned.get(self.name, [])
        return {
            guest_ifname(i): [str(a) for a in interfaces] for i, interfaces in enumerate(nics) if interfaces
        }

    def address(self, nic: Bridge | str | int = 0, *, version: int | None = None) -> str:
        """The address (without prefix length) the lab gave the guest's NIC *nic*: a
        bridge (its first NIC on it), a bridge's name, ``ethN``, an index or a TAP name.
        IPv4 if it has one, unless *version* is 6.

        Raises:
            ConfigError: no such NIC, or a *version* other than 4 or 6.
            LabError: the guest is not started, or the NIC has no address of that version.
        """
        if version not in (None, 4, 6):
            raise ConfigError(f"version {version!r} is not accepted: give 4, 6 or None")
        index = self._nic_position(nic)
        interfaces = self.addresses.get(guest_ifname(index), [])
        found = [a.split("/")[0] for a in interfaces if version is None or (":" in a) == (version == 6)]
        if not found:
            what = f"an IPv{version} address" if version else "an address"
            raise LabError(
                f"{self.name}: {guest_ifname(index)} has no {what} from the lab (give its bridge a "
                "subnet, or the NIC an address with bridge.nic(address=...))"
            )
        return found[0]

    def _nic_position(self, nic: Bridge | str | int) -> int:
        """The ``ethN`` number of *nic* among all the guest's NICs (NAT ones too)."""
        given, nics = nic, self.spec.nics
        bridge = nic.name if isinstance(nic, Bridge) else None
        if isinstance(nic, str) and nic in self.context.bridges:
            bridge = nic
        if bridge is not None:
            for index, spec in enumerate(nics):
                if spec.bridge == bridge:
                    return index
            raise ConfigError(
                f"{self.name} has no NIC on bridge {bridge!r} (its bridges: "
                f"{', '.join(sorted({n.bridge for n in nics if n.bridge})) or 'none'})"
            )
        ifindex = guest_ifindex(nic) if isinstance(nic, str) else None
        if ifindex is not None:
            nic = ifindex
        elif isinstance(nic, str) and nic in self.taps:
            on_bridges = [i for i, n in enumerate(nics) if n.bridge is not None]
            nic = on_bridges[self.taps.index(nic)]
        if isinstance(nic, int) and not isinstance(nic, bool) and 0 <= nic < len(nics):
            return nic
        raise ConfigError(
            f"NIC {given!r} of {self.name!r} is not accepted: give a bridge, a bridge's name, "
            f"{guest_ifname(0)}..{guest_ifname(len(nics) - 1)}, an index or a TAP name "
            f"({', '.join(self.taps) or 'none'})"
            if nics else f"NIC {given!r} of {self.name!r}: the guest has no NICs"
        )

    def set_link(self, nic: Bridge | int | str, up: bool) -> None:
        """Pull (``up=False``) or plug back (``up=True``) the cable of a lab NIC: the
        guest sees carrier loss. Uses QMP ``set_link`` on the NIC's netdev.

        Raises:
            ConfigError: no such NIC.
            LabError: the guest is not started, or QEMU refused.
        """
        index = self.nic_index(nic)
        if self.machine is None:
            raise LabError(f"{self.name}: the guest is not started; call netlab.start() first")
        self.machine.qmp("set_link", name=f"lab{index}", up=bool(up))

    def impair(
        self, nic: Bridge | int | str = 0, *, delay_ms: float = 0, jitter_ms: float = 0,
        loss_percent: float = 0, rate_kbit: int | None = None, where: Where = "auto",
        corrupt_percent: float = 0, duplicate_percent: float = 0, reorder_percent: float = 0,
    ) -> Impairment:
        """Delay, jitter, drop, corrupt, duplicate, reorder or rate-limit the traffic of
        a lab NIC (*reorder_percent* of the packets go at once, the rest are delayed, so
        it needs a delay). Call it before
        ``start()`` to have it from the first packet, or any time after to change it;
        all defaults remove it.

        *where* says which side of the link gets the qdisc, and so which direction
        suffers: ``"tap"``, on the NIC's TAP in the lab namespace, shapes the traffic
        going **to** the guest; ``"guest"``, a netem qdisc on ``ethN`` in the guest,
        the traffic coming **from** the guest; ``"auto"`` takes the TAP when the host
        kernel has the qdisc needed (netem for all but a rate, tbf for a rate
        alone), else the guest. The returned :class:`Impairment` says where it went.

        Raises:
            ConfigError: no such NIC, a value out of range, an unknown *where*, or
                ``where="tap"`` for delay, jitter or loss on a host without netem.
            NamespaceError: the kernel refused the qdisc on the TAP.
            CommandError: ``tc`` in the guest refused it.
        """
        index = self.nic_index(nic)
        wanted = Impairment(
            delay_ms, jitter_ms, loss_percent, rate_kbit, where,
            corrupt_percent, duplicate_percent, reorder_percent,
        ).validated()
        impairment = wanted.placed(host_has_qdisc)
        previous = self.impairments.get(index)
        self.impairments[index] = impairment
        if self.started and not (impairment.none and (previous is None or previous.none)):
            self._apply_impairment(index, impairment)
        return impairment

    def _apply_impairment(self, index: int, impairment: Impairment) -> None:
        applied = self._impaired_at.get(index)
        target = None if impairment.none else impairment.where
        if applied is not None and applied != target:
            self._remove_impairment(index, applied)
        if target == "tap":
            qdisc = impairment.tap_qdisc()
            assert qdisc is not None  # not none, so there is a qdisc to set
            self.context.namespace.set_root_qdisc(self._tap(index), *qdisc)
        elif target == "guest":
            self.ssh(shlex.join(impairment.tc_argv(guest_ifname(index))))
        if target is None:
            self._impaired_at.pop(index, None)
        else:
            self._impaired_at[index] = target

    def _remove_impairment(self, index: int, where: str) -> None:
        if where == "tap":
            self.context.namespace.remove_root_qdisc(self._tap(index))
        else:
            self.ssh(shlex.join(Impairment().tc_argv(guest_ifname(index))) + " 2>/dev/null || true")
        self._impaired_at.pop(index, None)

    # -- routing ----------------------------------------------------------------------
    def interface_up(self, nic: Bridge | int | str) -> None:
        """Bring the guest's interface of lab NIC *nic* up (``ip link set ethN up``), e.g.
        a NIC without an address, which the lab leaves down::

            h1.interface_up("eth1")  # or a bridge, its name, an index, a TAP name

        The interface, not the cable: :meth:`set_link` pulls and plugs that.

        Raises:
            ConfigError: no such NIC.
            CommandError: the guest refused.
        """
        self.ssh(f"ip link set {guest_ifname(self.nic_index(nic))} up")

    def set_route(self, to: str, via: str) -> None:
        """Route *to* (a network, or ``"default"``) through *via*, a neighbour's address::

            h1.set_route("10.20.20.0/24", via="10.20.10.2")

        A route to the same network with the same metric is replaced (one the address
        plan set, say). IPv6 when *via* is an IPv6 address.

        Raises:
            ConfigError: a malformed network or address, or of two IP versions.
            CommandError: the guest refused it (e.g. *via* is on none of its links).
        """
        gateway = validation.ip_address(via)
        if to != "default":
            network = validation.ip_network(to, "route to")
            if network.version != gateway.version:
                raise ConfigError(
                    f"route to {to!r} via {via!r} is not accepted: give a next hop of the "
                    f"network's IP version (IPv{network.version})"
                )
            to = str(network)
        six = "-6 " if gateway.version == 6 else ""
        self.ssh(f"ip {six}route replace {to} via {gateway}")

    def enable_forwarding(self, *, ipv4: bool = True, ipv6: bool = False) -> None:
        """Have the guest forward packets between its interfaces (IPv4, and IPv6 with
        *ipv6*); off at boot. Any guest may, routers usually do (see :class:`Router`).

        Raises:
            CommandError: the guest refused.
        """
        self._forwarding(1, ipv4, ipv6)

    def disable_forwarding(self, *, ipv4: bool = True, ipv6: bool = False) -> None:
        """Stop forwarding (IPv4, and IPv6 with *ipv6*)."""
        self._forwarding(0, ipv4, ipv6)

    def _forwarding(self, value: int, ipv4: bool, ipv6: bool) -> None:
        keys = (["net.ipv4.ip_forward"] if ipv4 else []) + (
            ["net.ipv6.conf.all.forwarding"] if ipv6 else []
        )
        if keys:
            self.ssh("sysctl -qw " + " ".join(f"{k}={value}" for k in keys))

    def set_sysctl(self, key: str, value: str | int) -> None:
        if not key.replace(".", "").replace("_", "").replace("/", "").replace("-", "").isalnum():
            raise ConfigError(f"sysctl key {key!r} is not accepted: use letters, digits, '.', '_', '-', '/'")
        self.ssh(f"sysctl -qw {shlex.quote(key)}={shlex.quote(str(value))}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} of {self.context.name}>"

    def apply_nic_settings(self) -> None:
        """Set what ``bridge.nic(mtu=, up=)`` asked for, once the guest answers: the
        MTU of ``ethN`` (its TAP got it when made) and the cables pulled at start."""
        changed = [(guest_ifname(i), n) for i, n in enumerate(self.spec.nics) if n.mtu]
        if changed:
            self.ssh(" && ".join(f"ip link set {name} mtu {nic.mtu}" for name, nic in changed))
            # some models (e1000) reset on an MTU change: the carrier is off when ip
            # returns and back after a moment; wait until those that are up have it again
            # (and the operational state, which lags it), so the test's first packet goes out
            self.wait_until(" && ".join(
                f"{{ ! ip -o link show {name} | grep -q '[<,]UP[,>]' || {{ grep -qx 1 "
                f"/sys/class/net/{name}/carrier && grep -qx up /sys/class/net/{name}/operstate; }}; }}"
                for name, nic in changed if nic.up
            ) or "true", timeout=30)
        for index, nic in enumerate(self.spec.nics):
            if not nic.up:
                self.set_link(index, False)
                # the carrier goes at once, the operational state (ip's NO-CARRIER) up to
                # a second later (the kernel's linkwatch): the test's first command sees it
                self.wait_until(f"grep -qx down /sys/class/net/{guest_ifname(index)}/operstate", timeout=30)

    def iperf(
        self, to: VM | str, *, seconds: float = 3, udp: bool = False, bitrate: str | None = None,
        reverse: bool = False, port: int = 5201, timeout: float | None = None,
    ) -> IperfResult:
        """Measure throughput from this guest to *to* (a guest, or an address) with
        iperf3: its server runs on *to* (a guest) for this call only, as a daemon, and
        is stopped after; the client's JSON report is parsed. *bitrate* (iperf3's
        ``-b``, e.g. ``"10M"``) is for UDP mostly; *reverse* sends from *to* instead.

        Raises:
            ConfigError: iperf3 is missing in a guest (use a package image with it),
                or a bad value.
            LabError: iperf3 failed; the message has its error.
        """
        validation.int_in_range(port, 1, 65535, what="iperf3 port")
        _number_in(seconds, 0.1, 3600, "seconds")
        if bitrate is not None and not re.fullmatch(r"\d+(\.\d+)?[KMG]?", str(bitrate)):
            raise ConfigError(
                f"bitrate={bitrate!r} is not accepted: give iperf3's -b, e.g. '500K', '10M', '1G'"
            )
        guests = [self, to] if isinstance(to, VM) else [self]
        for guest in guests:
            if not guest.ssh("command -v iperf3", check=False).ok:
                raise ConfigError(
                    f"{guest.name}: iperf3 is not installed in the guest: run it on a package "
                    "image with it, e.g. netlab.image(packages=['iperf3'])"
                )
        address = to.address() if isinstance(to, VM) else _host_or_address(to)
        argv = ["iperf3", "-c", address, "-p", str(port), "-t", f"{seconds:g}", "-J"]
        argv += (["-u"] if udp else []) + (["-b", bitrate] if bitrate else []) + (["-R"] if reverse else [])
        name = f"iperf3-{port}"
        if isinstance(to, VM):
            to.daemon(f"iperf3 -s -p {port}", name=name)
        try:
            if isinstance(to, VM):
                to.wait_until(f"ss -Hln 'sport = :{port}' | grep -q .")  # listening: no race
            result = self.ssh(shlex.join(argv), check=False, timeout=timeout or seconds + 30)
        finally:
            if isinstance(to, VM):
                to.stop_daemon(name)
        return parse_iperf(result.stdout)


class Router(VM):
    """A guest that routes between its NICs once forwarding is on (off at boot). The
    address plan takes routers first, gives them routes to the subnets behind other
    routers (none with ``routes=False``: a routing daemon's job then), and points
    ``gateway="auto"`` at them (see :mod:`pytest_netlab.addressing`)."""


def _check_daemon_name(name: object) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._-" for c in name) \
            or name.startswith("."):
        raise ConfigError(
            f"daemon name {name!r} is not accepted: give letters, digits, '.', '_' or '-' "
            "(it names the log file /var/log/netlab/NAME.log)"
        )


def _host_or_address(value: object) -> str:
    if isinstance(value, str) and value and all(c.isalnum() or c in ".-:_" for c in value):
        if any(c.isalpha() for c in value.replace(":", "")) and ":" not in value:
            return value  # a host name, e.g. from /etc/hosts
        return str(validation.ip_address(value))
    raise ConfigError(
        f"ping destination {value!r} is not accepted: give an IPv4/IPv6 address or a host name"
    )


def _number_in(value: object, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{what}={value!r} is not accepted: give a number from {low:g} to {high:g}")
    return float(value)
