"""A lab: one network namespace with bridges and TAPs, and QEMU guests on them.

:class:`Lab` is what the ``netlab`` fixture gives a test. It owns every resource it
creates and ``close()`` removes them in reverse order, logging each failure and going
on, then raising once at the end.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import shlex
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import validation
from .addressing import (
    AddressPlan,
    GuestRequest,
    Interface,
    Network,
    NicRequest,
    check_overlaps,
    explicit_addresses,
    parse_subnets,
)
from .errors import CommandError, ConfigError, GuestGoneError, LabError, NetlabError
from .image import GuestImage
from .impairment import Impairment, Where
from .netns import HostCommandResult, LabNamespace, host_has_qdisc
from .pcap import Capture, read_pcap, tcpdump_argv, wait_listening
from .ping import PingResult, parse_ping
from .qemu import MGMT_MAC, MachineConfig, NicConfig, QemuMachine, find_qemu
from .retry import retry_until
from .ssh import CommandResult, SessionKey, SSHSession
from .templates import (
    GuestHostKey,
    Layout,
    NicLayout,
    TemplateStore,
    config_line,
    guest_cmdline,
    nic_modules,
)
from .topology import GuestSpec, NicSpec, lab_mac, tap_name

log = logging.getLogger(__name__)

NAMESPACE_PREFIX = "netlab-"
BOOT_MODES = ("snapshot", "cold")
CAPTURE_SETTLE = 0.2  # seconds
_lab_numbers = itertools.count(1)
_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


@dataclass(frozen=True)
class LabSettings:
    """How a lab boots its guests; the plugin fills it from options and ini values."""

    accel: str = "tcg"
    boot: str = "snapshot"  # or "cold": see pytest_netlab.templates
    templates: TemplateStore | None = None
    boot_timeout: float = 120.0
    ssh_timeout: float = 30.0
    command_timeout: float = 60.0
    pcap: bool = False  # record every bridge to a pcap file (see Lab.record_bridges)


def namespace_name(pid: int, number: int) -> str:
    """Lab namespace names carry their owner's pid, so leftovers of dead runs are known."""
    return f"{NAMESPACE_PREFIX}{pid}-{number}"


class Bridge:
    """A Linux bridge inside the lab namespace."""

    def __init__(self, lab: Lab, name: str, number: int, subnets: tuple[Network, ...] = ()) -> None:
        self.lab = lab
        self.name = name
        self.number = number
        self.ports = 0
        self.subnets = subnets  # the address plan's networks (netlab.bridge(subnet=...))
        self.addresses: list[Interface] = []  # the lab namespace's own, from add_address

    def nic(
        self, *, model: str = "virtio-net-pci", mac: str | None = None, tap: str | None = None,
        queues: int = 1, vectors: int | None = None, address: str | Sequence[str] | None = None,
    ) -> NicSpec:
        """A NIC on this bridge with options, for ``nics=[...]``.

        *address* (with prefix length, or a list of one IPv4 and one IPv6 address) is
        set in the guest at start, instead of one from the bridge's subnet; on a bridge
        with a subnet it must be inside it.

        Raises:
            ConfigError: a bad option, or an address outside the bridge's subnet.
        """
        addresses = () if address is None else tuple(
            str(i) for i in explicit_addresses(address, self.name, self.subnets)
        )
        return NicSpec(self.name, model, mac, tap, queues, vectors, addresses).validated()

    def add_address(self, address: str) -> None:
        """Give the bridge an address in the lab namespace (a host-only network). The
        address plan never hands it to a guest.

        Raises:
            ConfigError: a malformed address, or one a guest has already.
        """
        iface = validation.ip_interface(address)
        owner = self.lab._address_owner(iface.ip)
        if owner is not None:
            raise ConfigError(
                f"address {iface.ip} for bridge {self.name!r} is used already by {owner}: "
                "give the bridge another address"
            )
        self.lab.namespace.add_address(self.name, str(iface.ip), iface.network.prefixlen)
        self.addresses.append(iface)

    def __repr__(self) -> str:
        return f"<Bridge {self.name} of {self.lab.name}>"


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

    def __init__(self, lab: Lab, spec: GuestSpec, number: int, macs: list[str], taps: list[str]) -> None:
        self.lab = lab
        self.spec = spec
        self.name = spec.name
        self.number = number
        self.macs = macs
        self.taps = taps
        self.machine: QemuMachine | None = None
        self._ssh: SSHSession | None = None
        self._console_ready = False  # a guest without network: booted, console only
        self.impairments: dict[int, Impairment] = {}
        self._impaired_at: dict[int, str] = {}  # NIC index -> "tap" or "guest", as set now
        self.log = log.getChild(spec.name)

    # -- state ------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._ssh is not None or self._console_ready

    @property
    def console_log(self) -> Path:
        return self.lab.workdir / self.name / "console.log"

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
            command, timeout=timeout or self.lab.settings.command_timeout, stdin=stdin
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
        status, output = self.machine.console_run(command, timeout or self.lab.settings.command_timeout)
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

    # -- files ------------------------------------------------------------------------
    def put(self, local: str | Path, remote: str, *, mode: int | None = None, timeout: float = 60.0) -> None:
        """Copy the local file *local* to path *remote* in the guest (over SFTP, on the
        guest's SSH connection); with *mode* (e.g. ``0o600``) the file has that mode
        before its first byte is written.

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

    def get(self, remote: str, local: str | Path, *, timeout: float = 60.0) -> Path:
        """Copy the guest's file *remote* to *local* (a file path; over SFTP); return *local*.

        Raises:
            ConfigError: *remote* or *local* is not a path.
            TransferError: the guest cannot read *remote*, or *local* cannot be written
                (e.g. its directory does not exist); the message names the path.
            SSHError: the connection is gone.
        """
        _check_remote_path(remote)
        path = _local_path(local)
        self._session().get_file(remote, path, timeout=timeout)
        return path

    # -- links ------------------------------------------------------------------------
    def nic_index(self, nic: int | str) -> int:
        """The position of a lab NIC given as an index, ``ethN`` or its TAP name.

        Raises:
            ConfigError: no such NIC.
        """
        count = len(self.taps)
        index: int | None = None
        if isinstance(nic, int) and not isinstance(nic, bool):
            index = nic
        elif isinstance(nic, str) and nic.startswith("eth") and nic[3:].isdigit():
            index = int(nic[3:])
        elif isinstance(nic, str) and nic in self.taps:
            index = self.taps.index(nic)
        if index is None or not 0 <= index < count:
            raise ConfigError(
                f"NIC {nic!r} of {self.name!r} is not accepted: give an index from 0 to {count - 1}, "
                f"eth0..eth{count - 1} or a TAP name ({', '.join(self.taps)})"
                if count else f"NIC {nic!r} of {self.name!r}: the guest has no lab NICs"
            )
        return index

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
        nics = self.lab.plan.assigned.get(self.name, [])
        return {f"eth{i}": [str(a) for a in interfaces] for i, interfaces in enumerate(nics) if interfaces}

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
        interfaces = self.addresses.get(f"eth{index}", [])
        found = [a.split("/")[0] for a in interfaces if version is None or (":" in a) == (version == 6)]
        if not found:
            what = f"an IPv{version} address" if version else "an address"
            raise LabError(
                f"{self.name}: eth{index} has no {what} from the lab (give its bridge a "
                "subnet, or the NIC an address with bridge.nic(address=...))"
            )
        return found[0]

    def _nic_position(self, nic: Bridge | str | int) -> int:
        """The ``ethN`` number of *nic* among all the guest's NICs (NAT ones too)."""
        nics = self.spec.nics
        bridge = nic.name if isinstance(nic, Bridge) else None
        if isinstance(nic, str) and nic in self.lab.bridges:
            bridge = nic
        if bridge is not None:
            for index, spec in enumerate(nics):
                if spec.bridge == bridge:
                    return index
            raise ConfigError(
                f"{self.name} has no NIC on bridge {bridge!r} (its bridges: "
                f"{', '.join(sorted({n.bridge for n in nics if n.bridge})) or 'none'})"
            )
        if isinstance(nic, str) and nic.startswith("eth") and nic[3:].isdigit():
            nic = int(nic[3:])
        elif isinstance(nic, str) and nic in self.taps:
            on_bridges = [i for i, n in enumerate(nics) if n.bridge is not None]
            nic = on_bridges[self.taps.index(nic)]
        if isinstance(nic, int) and not isinstance(nic, bool) and 0 <= nic < len(nics):
            return nic
        raise ConfigError(
            f"NIC {nic!r} of {self.name!r} is not accepted: give a bridge, a bridge's name, "
            f"eth0..eth{len(nics) - 1}, an index or a TAP name" if nics
            else f"NIC {nic!r} of {self.name!r}: the guest has no NICs"
        )

    def set_link(self, nic: int | str, up: bool) -> None:
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
        self, nic: int | str = 0, *, delay_ms: float = 0, jitter_ms: float = 0,
        loss_percent: float = 0, rate_kbit: int | None = None, where: Where = "auto",
    ) -> Impairment:
        """Delay, jitter, drop or rate-limit the traffic of a lab NIC. Call it before
        ``start()`` to have it from the first packet, or any time after to change it;
        all defaults remove it.

        *where* says which side of the link gets the qdisc, and so which direction
        suffers: ``"tap"``, on the NIC's TAP in the lab namespace, shapes the traffic
        going **to** the guest; ``"guest"``, a netem qdisc on ``ethN`` in the guest,
        the traffic coming **from** the guest; ``"auto"`` takes the TAP when the host
        kernel has the qdisc needed (netem for delay, jitter and loss, tbf for a rate
        alone), else the guest. The returned :class:`Impairment` says where it went.

        Raises:
            ConfigError: no such NIC, a value out of range, an unknown *where*, or
                ``where="tap"`` for delay, jitter or loss on a host without netem.
            NamespaceError: the kernel refused the qdisc on the TAP.
            CommandError: ``tc`` in the guest refused it.
        """
        index = self.nic_index(nic)
        wanted = Impairment(delay_ms, jitter_ms, loss_percent, rate_kbit, where).validated()
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
            self.lab.namespace.set_root_qdisc(self.taps[index], *qdisc)
        elif target == "guest":
            self.ssh(shlex.join(impairment.tc_argv(f"eth{index}")))
        if target is None:
            self._impaired_at.pop(index, None)
        else:
            self._impaired_at[index] = target

    def _remove_impairment(self, index: int, where: str) -> None:
        if where == "tap":
            self.lab.namespace.remove_root_qdisc(self.taps[index])
        else:
            self.ssh(shlex.join(Impairment().tc_argv(f"eth{index}")) + " 2>/dev/null || true")
        self._impaired_at.pop(index, None)

    def set_sysctl(self, key: str, value: str | int) -> None:
        if not key.replace(".", "").replace("_", "").replace("/", "").replace("-", "").isalnum():
            raise ConfigError(f"sysctl key {key!r} is not accepted: use letters, digits, '.', '_', '-', '/'")
        self.ssh(f"sysctl -qw {shlex.quote(key)}={shlex.quote(str(value))}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} of {self.lab.name}>"


class Router(VM):
    """A guest that routes between its NICs once forwarding is on (off at boot)."""

    def enable_forwarding(self, *, ipv4: bool = True, ipv6: bool = False) -> None:
        self._forwarding(1, ipv4, ipv6)

    def disable_forwarding(self, *, ipv4: bool = True, ipv6: bool = False) -> None:
        self._forwarding(0, ipv4, ipv6)

    def _forwarding(self, value: int, ipv4: bool, ipv6: bool) -> None:
        keys = (["net.ipv4.ip_forward"] if ipv4 else []) + (
            ["net.ipv6.conf.all.forwarding"] if ipv6 else []
        )
        if keys:
            self.ssh("sysctl -qw " + " ".join(f"{k}={value}" for k in keys))


class Lab:
    """One isolated network lab. Made by the ``netlab`` fixture; see the README."""

    def __init__(
        self, workdir: Path, image: GuestImage, key: SessionKey,
        settings: LabSettings | None = None, name: str | None = None,
    ) -> None:
        self.number = next(_lab_numbers)
        self.name = name or namespace_name(os.getpid(), self.number)
        self.workdir = workdir
        self.image = image
        self.key = key
        self.settings = settings or LabSettings()
        self.namespace = LabNamespace(self.name)
        self.bridges: dict[str, Bridge] = {}
        self.vms: dict[str, VM] = {}
        self._macs: set[str] = set()
        self._taps: set[str] = set()
        self._owner = threading.get_ident()
        self._closed = False
        self._recording = self.settings.pcap
        self._pcaps: list[Path] = []
        self._captures = itertools.count(1)
        self.log = log.getChild(self.name)
        self.timings: dict[str, float] = {}
        self.diagram: str | None = None  # Mermaid text, set when built from a Topology
        self.plan = AddressPlan()  # filled at start() when a bridge has a subnet (opt-in)
        _open_labs.add(self)

    # -- building ---------------------------------------------------------------------
    def _ensure_namespace(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.name} is closed")
        if not self.namespace.created:
            self.namespace.create()
            self.workdir.mkdir(parents=True, exist_ok=True)

    def bridge(self, name: str, *, subnet: str | Sequence[str] | None = None) -> Bridge:
        """Create bridge *name* (up, STP off) in the lab namespace.

        *subnet* (e.g. ``"10.20.10.0/24"``, an IPv6 prefix, or a list of one of each)
        makes the lab address every guest NIC on the bridge at start, see
        :mod:`pytest_netlab.addressing`; without it nothing is set in the guests.

        Raises:
            ConfigError: a bad or duplicate name; a bad subnet, or one that overlaps
                another bridge's or the user-mode NAT network 10.0.2.0/24.
        """
        validation.interface_name(name, "bridge name")
        if name in self.bridges:
            raise ConfigError(f"bridge {name!r} exists already in this lab: give each bridge its own name")
        subnets = () if subnet is None else parse_subnets(subnet, name)
        check_overlaps(name, subnets, {b: br.subnets for b, br in self.bridges.items()})
        self._ensure_namespace()
        self.namespace.add_bridge(name)
        bridge = Bridge(self, name, len(self.bridges) + 1, subnets)
        self.bridges[name] = bridge
        if self._recording:
            self._record(name)
        return bridge

    def nat(self, *, model: str = "virtio-net-pci", mac: str | None = None) -> NicSpec:
        """A user-mode (slirp) NAT NIC, for ``nics=[...]``: the guest gets 10.0.2.15 by
        DHCP from QEMU (e.g. ``udhcpc -i eth0``), its default route points at the
        gateway 10.0.2.2, and 10.0.2.2 reaches the host's 127.0.0.1. A guest with such a
        NIC cold-boots (no saved state). Point it only at 10.0.2.2, never outside.

        Raises:
            ConfigError: an unknown model or a malformed MAC.
        """
        return NicSpec(None, model, mac).validated()

    # -- packet capture ---------------------------------------------------------------
    @property
    def pcap_dir(self) -> Path:
        return self.workdir / "pcap"

    @property
    def pcap_files(self) -> list[Path]:
        """The pcap files of :meth:`record_bridges`, one per bridge."""
        return list(self._pcaps)

    def record_bridges(self) -> None:
        """Record every bridge of the lab, those made so far and those made later, to
        ``<bridge>.pcap`` in :attr:`pcap_dir` until the lab closes (what
        ``--netlab-pcap`` does for every lab).

        Raises:
            LabError: tcpdump could not start.
        """
        if self._recording and all(self.pcap_dir / f"{b}.pcap" in self._pcaps for b in self.bridges):
            return
        self._recording = True
        for name in self.bridges:
            if self.pcap_dir / f"{name}.pcap" not in self._pcaps:
                self._record(name)

    def _record(self, bridge: str) -> None:
        path = self.pcap_dir / f"{bridge}.pcap"
        self._tcpdump(bridge, path, f"tcpdump-{bridge}")
        self._pcaps.append(path)

    def _tcpdump(self, bridge: str, path: Path, log_name: str) -> Any:
        """Start tcpdump on *bridge* writing *path*; return once it listens."""
        self.pcap_dir.mkdir(parents=True, exist_ok=True)
        proc = self.spawn(tcpdump_argv(bridge, path), name=log_name)
        wait_listening(self.workdir / f"{log_name}.log", proc)
        return proc

    @contextmanager
    def capture(self, bridge: str | Bridge) -> Iterator[Capture]:
        """Capture what crosses *bridge* while the block runs; the yielded
        :class:`~pytest_netlab.pcap.Capture` has ``packets`` when the block ends.

        Raises:
            ConfigError: no such bridge in this lab.
            LabError: tcpdump could not start.
        """
        name = bridge.name if isinstance(bridge, Bridge) else bridge
        if name not in self.bridges:
            raise ConfigError(
                f"bridge {name!r} is not in this lab (bridges: {', '.join(self.bridges) or 'none'})"
            )
        number = next(self._captures)
        path = self.pcap_dir / f"capture{number}-{name}.pcap"
        proc = self._tcpdump(name, path, f"capture{number}-{name}")
        capture = Capture(name, path)
        try:
            yield capture
        finally:
            # frames of the block's last moment may still be on their way to tcpdump
            time.sleep(CAPTURE_SETTLE)
            proc.terminate()  # tcpdump flushes and closes the file on SIGTERM
            try:
                proc.wait(5)
            except Exception:  # noqa: BLE001 - a stuck tcpdump is killed, the packets so far kept
                proc.kill()
                proc.wait()
            capture.packets = read_pcap(path)

    def evidence_files(self) -> list[Path]:
        """Files worth keeping when a test fails: pcaps and the logs of daemons."""
        found = [p for p in self.pcap_dir.glob("*.pcap")] if self.pcap_dir.exists() else []
        if self.workdir.exists():
            found += sorted(self.workdir.glob("*.log"))
        return found

    def vm(
        self, name: str, nics: Sequence[Bridge | NicSpec] = (), *, role: str = "host",
        memory: int = 128, cpus: int = 1, kernel: str | Path | None = None,
        initrd: str | Path | None = None, rootfs: str | Path | None = None,
        append: str = "", disks: Sequence[str | Path] = (), network: bool = True,
        forwards: Sequence[int] = (), numa: bool = False, aslr: bool = False,
        gateway: str | None = None,
    ) -> VM:
        """Declare guest *name*; it boots at the next ``start()``.

        Each entry of *nics* is a bridge of this lab (a virtio-net NIC on a new TAP of
        it), ``bridge.nic(...)`` with options, or ``netlab.nat()``. In the guest they
        are ``eth0``, ``eth1``... in this order.

        *append*: kernel parameters added to the guest's command line (the guest then
        boots cold: a resumed kernel keeps the command line it was saved with).

        *forwards*: guest TCP ports reachable from the host's 127.0.0.1 (see
        :meth:`VM.forward_port`). ``network=False``: no NIC at all, not even the
        management NIC, so no SSH; the guest is driven with :meth:`VM.console_run`.
        ``numa=True``: the guest's memory comes from a memory backend given to one NUMA
        node (``-object memory-backend-ram -numa node,memdev=``). ``aslr=True``: the
        guest randomises where programs and libraries are mapped, as a normal system
        does; off by default because under TCG it makes every exec of a dynamically
        linked program about 50 ms slower (QEMU translates the libraries again at each
        new address).

        *gateway*: a default route set at start (with the addresses of the bridges'
        subnets): ``"auto"`` (via the first router on the guest's first addressed
        bridge; nothing for a router), a router's name, or an address.

        Raises:
            ConfigError: bad or duplicate name, a bridge of another lab, duplicate MACs,
                TAP names or addresses, sizes out of range, unreadable kernel or disk,
                a bad gateway.
        """
        if name in self.vms:
            raise ConfigError(f"guest {name!r} exists already in this lab: give each guest its own name")
        specs: list[NicSpec] = []
        for nic in nics:
            if isinstance(nic, Bridge):
                if nic.lab is not self:
                    raise ConfigError(
                        f"bridge {nic.name!r} belongs to lab {nic.lab.name}, not {self.name}: "
                        "use bridges made by this lab's netlab.bridge()"
                    )
                specs.append(NicSpec(nic.name))
            elif isinstance(nic, NicSpec):
                if nic.bridge is not None and nic.bridge not in self.bridges:
                    raise ConfigError(
                        f"NIC on bridge {nic.bridge!r}: this lab has no such bridge "
                        f"(bridges: {', '.join(self.bridges) or 'none'})"
                    )
                specs.append(nic)
            else:
                raise ConfigError(
                    f"NIC {nic!r} of {name!r} is not accepted: give a bridge of this lab "
                    "or bridge.nic(...)"
                )
        spec = GuestSpec(
            name=name, role=role, nics=specs, memory=memory, cpus=cpus,
            kernel=_path(kernel), initrd=_path(initrd), rootfs=_path(rootfs),
            append=append, disks=[Path(d) for d in disks], network=network,
            forwards=list(forwards), numa=numa, aslr=aslr, gateway=gateway,
        ).validated()
        given = [validation.ip_interface(a).ip for nic in specs for a in nic.addresses]
        for address in given:
            owner = self._address_owner(address)
            if owner is not None or given.count(address) > 1:
                raise ConfigError(
                    f"address {address} of {name!r} is used already by {owner or name}: "
                    "give each NIC its own address"
                )
        number = len(self.vms) + 1
        chosen = {nic.mac.lower() for nic in specs if nic.mac}
        auto = (m for i in itertools.count() if (m := lab_mac(number, i)) not in self._macs | chosen)
        macs = [nic.mac.lower() if nic.mac else next(auto) for nic in specs]
        for mac in macs:
            if mac in self._macs or macs.count(mac) > 1 or mac == MGMT_MAC:
                raise ConfigError(
                    f"MAC address {mac} of {name!r} is already used in this lab: "
                    "every NIC on a lab needs its own MAC"
                )
        taps: list[str] = []
        ports = {b: br.ports for b, br in self.bridges.items()}
        for nic in specs:
            if nic.bridge is None:
                continue  # NAT: no TAP
            if nic.tap is None:
                ports[nic.bridge] += 1
                tap = tap_name(self.bridges[nic.bridge].number, ports[nic.bridge])
            else:
                tap = nic.tap
            if tap in self._taps or tap in taps or tap in self.bridges:
                raise ConfigError(f"TAP name {tap!r} of {name!r} is already used in this lab")
            taps.append(tap)
        for nic in specs:
            if nic.bridge is not None:
                self.bridges[nic.bridge].ports += 1
        self._macs.update(macs)
        self._taps.update(taps)
        cls = Router if role == "router" else VM
        vm = cls(self, spec, number, macs, taps)
        self.vms[name] = vm
        return vm

    def _address_owner(self, address: Any) -> str | None:
        """Who has *address* (an ``ipaddress`` address) in this lab: a guest's NIC
        (given or planned) or a bridge's host side; ``None`` if it is free."""
        for bridge in self.bridges.values():
            if any(i.ip == address for i in bridge.addresses):
                return f"bridge {bridge.name!r} (host side)"
        for vm in self.vms.values():
            if any(validation.ip_interface(a).ip == address for n in vm.spec.nics for a in n.addresses):
                return vm.name
        for guest, nics in self.plan.assigned.items():
            if any(i.ip == address for interfaces in nics for i in interfaces):
                return guest
        return None

    def _addressing(self) -> bool:
        """Whether the lab asked for addresses: a subnet, a NIC address or a gateway."""
        return any(b.subnets for b in self.bridges.values()) or any(
            vm.spec.gateway is not None or any(n.addresses for n in vm.spec.nics)
            for vm in self.vms.values()
        )

    def _plan_addresses(self, pending: Sequence[VM]) -> dict[str, str]:
        """Choose the addresses of *pending* guests; return the set-up command of each
        guest that gets one (see :mod:`pytest_netlab.addressing`).

        Raises:
            ConfigError: a subnet with no free address, a duplicate address, a gateway
                that cannot be resolved, clashing host names.
        """
        if not self._addressing():
            return {}
        requests = {
            vm.name: GuestRequest(
                vm.name, isinstance(vm, Router),
                tuple(NicRequest(n.bridge, tuple(validation.ip_interface(a) for a in n.addresses))
                      for n in vm.spec.nics),
                vm.spec.gateway,
            )
            for vm in self.vms.values()
        }
        self.plan.assign(
            {b: br.subnets for b, br in self.bridges.items() if br.subnets},
            [requests[vm.name] for vm in pending],
            {b: br.addresses for b, br in self.bridges.items()},
            list(requests.values()),
        )
        return {vm.name: self.plan.guest_script(vm.name) for vm in pending if vm.spec.network}

    def router(self, name: str, nics: Sequence[Bridge | NicSpec] = (), **options: Any) -> Router:
        """Declare a guest that routes (see :meth:`Router.enable_forwarding`)."""
        vm = self.vm(name, nics, role="router", **options)
        assert isinstance(vm, Router)
        return vm

    # -- booting ----------------------------------------------------------------------
    def _machine_config(self, vm: VM) -> MachineConfig:
        """How *vm* is started: resumed from a template when it runs the default image,
        else a cold boot of its own kernel."""
        spec = vm.spec
        store = self.settings.templates
        # saved states have TAP NICs and a management NIC only: NAT NICs and guests
        # without network have other devices, so they cold-boot; a resumed kernel
        # keeps the template's command line, so guests with parameters of their own too
        resumable = spec.network and not any(n.nat for n in spec.nics) and not spec.append
        if (spec.kernel is None and not spec.disks and resumable
                and self.settings.boot == "snapshot" and store):
            layout = Layout(
                spec.memory, spec.cpus, self.settings.accel,
                tuple(NicLayout(n.model, n.queues, n.vectors) for n in spec.nics),
                numa=spec.numa,
            )
            image = self._image_for(vm)
            config = store.machine_config(layout, image, spec.name)
            config.incoming = store.state(layout, image, self.settings.boot_timeout)
        else:
            config = self._cold_config(vm)
        tap_nics = [(nic, s) for nic, s in zip(config.nics, spec.nics, strict=True) if s.bridge is not None]
        for (nic, spec_nic), tap in zip(tap_nics, vm.taps, strict=True):
            assert spec_nic.bridge is not None
            nic.fds = self.namespace.add_tap(tap, spec_nic.bridge, spec_nic.queues)
        return config

    def _image_for(self, vm: VM) -> GuestImage:
        """The default image, or its variant whose kernel drives the VM's NIC models."""
        return self.image.for_modules(nic_modules([n.model for n in vm.spec.nics]))

    def _cold_config(self, vm: VM) -> MachineConfig:
        spec = vm.spec
        models = [n.model for n in spec.nics]
        image = self._image_for(vm) if spec.kernel is None else self.image
        cmdline = guest_cmdline(
            image, spec.name, vm.macs, models, management=spec.network, aslr=spec.aslr,
            cpus=spec.cpus,
            # a kernel of the user's own: only the console and the netlab.* contract
            base="console=ttyS0" if spec.kernel is not None else None,
        )
        params = [cmdline, f"netlab.keytype={self.key.keytype}", f"netlab.key={self.key.blob}"]
        if spec.rootfs is not None:
            params.append("root=/dev/vda rw")
        # snapshot=on: writes go to a temporary overlay, the user's image is never changed
        drives = [
            f"file={disk},if=virtio,format={_disk_format(disk)},snapshot=on"
            for disk in ([spec.rootfs] if spec.rootfs is not None else []) + spec.disks
        ]
        if spec.append:
            params.append(spec.append)
        return MachineConfig(
            name=spec.name, kernel=spec.kernel or image.kernel,
            initrd=spec.initrd if spec.kernel else image.initrd, cmdline=" ".join(params),
            memory_mib=spec.memory, cpus=spec.cpus, accel=self.settings.accel,
            nics=[NicConfig(mac=mac, model=n.model, vectors=n.vectors, nat=n.nat)
                  for mac, n in zip(vm.macs, spec.nics, strict=True)],
            drives=drives, management=spec.network, numa=spec.numa,
        )

    def start(self, timeout: float | None = None) -> None:
        """Boot every declared guest that is not running yet, all at once; return when
        each answers SSH.

        Raises:
            ConfigError: QEMU is not installed, or the address plan cannot work
                (nothing is created then).
            BootTimeout: a guest did not come up within *timeout* seconds.
            QemuError: a QEMU process failed; the message has its command line and output.
            SSHError: a guest came up but SSH to it failed.
            LabError: the planned addresses could not be set in a guest.
        """
        if threading.get_ident() != self._owner:
            raise LabError("start() must be called from the thread that made the lab")
        pending = [vm for vm in self.vms.values() if vm.machine is None]
        if not pending:
            return
        find_qemu()  # a missing QEMU is bad input: say so before anything is made
        setups = self._plan_addresses(pending)  # so is an address plan that cannot work
        self._ensure_namespace()
        boot_timeout = timeout or self.settings.boot_timeout
        started = time.monotonic()
        machines = []
        for vm in pending:
            vm.machine = QemuMachine(self._machine_config(vm), self.workdir / vm.name)
            vm.machine.launch()
            machines.append(vm.machine)
        for vm, machine in zip(pending, machines, strict=True):
            if machine.config.incoming is not None:
                machine.finish_incoming()
                host_key = GuestHostKey.generate()
                machine.write_console(config_line(
                    vm.name, vm.macs, self.key.keytype, self.key.blob, host_key, aslr=vm.spec.aslr
                ))
        self.log.info("launched %s in %.2f s", ", ".join(v.name for v in pending), time.monotonic() - started)
        ports = {vm.name: vm.host_port(22) for vm in pending if vm.spec.network}
        for vm in pending:
            for guest_port in vm.spec.forwards:
                vm.forward_port(guest_port)

        def bring_up(vm: VM) -> None:
            assert vm.machine is not None
            vm.machine.wait_ready(boot_timeout, since=started)
            if not vm.spec.network:
                vm._console_ready = True  # no SSH: the serial console is its channel
                vm.log.info("ready (no network, console only) after %.2f s", time.monotonic() - started)
                return
            assert vm.machine.host_key is not None
            session = SSHSession(vm.name, ports[vm.name], self.key, vm.machine.host_key)
            session.connect(self.settings.ssh_timeout)
            vm._ssh = session
            if vm.name in setups:
                # addresses, default route and /etc/hosts: one command, one round trip
                try:
                    vm.ssh(setups[vm.name])
                except CommandError as exc:  # the lab could not be built, not a test failure
                    raise LabError(
                        f"{vm.name}: setting the planned addresses failed (the guest needs "
                        f"iproute2's ip and sed): {exc}"
                    ) from exc
            # impairments asked for before start() apply before the test's first command
            for index, impairment in vm.impairments.items():
                if not impairment.none:
                    vm._apply_impairment(index, impairment)
            vm.log.info("ready: SSH on 127.0.0.1:%d after %.2f s", ports[vm.name], time.monotonic() - started)

        with ThreadPoolExecutor(max_workers=len(pending), thread_name_prefix="boot") as pool:
            futures = [pool.submit(bring_up, vm) for vm in pending]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            raise failed[0]
        if setups:
            # guests started earlier learn the new guests' names
            for vm in self.vms.values():
                if vm not in pending and vm._ssh is not None:
                    vm.ssh(self.plan.hosts_script())
        self.timings["start"] = time.monotonic() - started

    # -- the lab namespace ------------------------------------------------------------
    def run(
        self, command: str | Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> HostCommandResult:
        """Run a command on the lab's host side (inside the lab namespace).

        Raises:
            CommandError: with ``check=True``, it exited non-zero.
        """
        self._ensure_namespace()
        return self.namespace.run(command, check=check, timeout=timeout)

    def spawn(self, command: str | Sequence[str], *, name: str = "daemon") -> Any:
        """Start a daemon (kept in the foreground) in the lab namespace; stopped at teardown."""
        self._ensure_namespace()
        text = command if isinstance(command, str) else shlex.join(command)
        return self.namespace.spawn(f"exec {text}", log_path=self.workdir / f"{name}.log")

    # -- teardown ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop every guest and remove the namespace with its links. Idempotent.

        Raises:
            LabError: something could not be removed (after trying everything else).
        """
        if self._closed:
            return
        self._closed = True
        failures: list[str] = []
        started = time.monotonic()
        vms = [vm for vm in reversed(self.vms.values()) if vm.machine is not None]
        for vm in vms:
            if vm._ssh is not None:
                vm._ssh.close()
        # every QEMU is asked to quit first, so they stop in parallel, then each is awaited
        for vm in vms:
            assert vm.machine is not None
            vm.machine.request_quit()
        for vm in vms:
            assert vm.machine is not None
            try:
                vm.machine.shutdown()
            except Exception as exc:  # noqa: BLE001 - teardown goes on, and reports at the end
                failures.append(f"{vm.name}: {exc}")
                self.log.error("stopping %s failed: %s", vm.name, exc)
        try:
            self.namespace.close()
        except NetlabError as exc:
            failures.append(str(exc))
            self.log.error("%s", exc)
        _open_labs.discard(self)
        self.timings["teardown"] = time.monotonic() - started
        if failures:
            raise LabError(f"teardown of lab {self.name} failed: " + "; ".join(failures))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.name}: bridges {list(self.bridges)}, guests {list(self.vms)}>"


def open_labs() -> list[Lab]:
    """The labs of this process that are not closed, oldest first."""
    return sorted(_open_labs, key=lambda lab: lab.number)


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def _disk_format(path: Path) -> str:
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"


def _host_or_address(value: object) -> str:
    if isinstance(value, str) and value and all(c.isalnum() or c in ".-:_" for c in value):
        if any(c.isalpha() for c in value.replace(":", "")) and ":" not in value:
            return value  # a host name, e.g. from /etc/hosts
        return str(validation.ip_address(value))
    raise ConfigError(
        f"ping destination {value!r} is not accepted: give an IPv4/IPv6 address or a host name"
    )


@atexit.register
def _close_leftover_labs() -> None:
    """Last line of defence: a lab still open when Python exits is closed."""
    for lab in list(_open_labs):
        try:
            lab.close()
        except NetlabError as exc:
            log.error("closing %s at exit: %s", lab.name, exc)
