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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import validation
from .errors import ConfigError, GuestGoneError, LabError, NetlabError
from .image import GuestImage
from .netns import HostCommandResult, LabNamespace
from .ping import PingResult, parse_ping
from .qemu import MGMT_MAC, MachineConfig, NicConfig, QemuMachine
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


def namespace_name(pid: int, number: int) -> str:
    """Lab namespace names carry their owner's pid, so leftovers of dead runs are known."""
    return f"{NAMESPACE_PREFIX}{pid}-{number}"


class Bridge:
    """A Linux bridge inside the lab namespace."""

    def __init__(self, lab: Lab, name: str, number: int) -> None:
        self.lab = lab
        self.name = name
        self.number = number
        self.ports = 0

    def nic(
        self, *, model: str = "virtio-net-pci", mac: str | None = None, tap: str | None = None,
        queues: int = 1, vectors: int | None = None,
    ) -> NicSpec:
        """A NIC on this bridge with options, for ``nics=[...]``."""
        return NicSpec(self.name, model, mac, tap, queues, vectors).validated()

    def add_address(self, address: str) -> None:
        """Give the bridge an address in the lab namespace (a host-only network)."""
        iface = validation.ip_interface(address)
        self.lab.namespace.add_address(self.name, str(iface.ip), iface.network.prefixlen)

    def __repr__(self) -> str:
        return f"<Bridge {self.name} of {self.lab.name}>"


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
        self.log = log.getChild(spec.name)

    # -- state ------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._ssh is not None

    @property
    def console_log(self) -> Path:
        return self.lab.workdir / self.name / "console.log"

    def _session(self) -> SSHSession:
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

    def host_port(self, guest_port: int = 22) -> int:
        """The port on 127.0.0.1 of the host that is forwarded to *guest_port* of the guest.

        Raises:
            LabError: no such forward.
        """
        if self.machine is None:
            raise LabError(f"{self.name}: the guest is not started; call netlab.start() first")
        forwards = self.machine.host_forwards()
        if guest_port not in forwards:
            raise LabError(
                f"{self.name}: guest port {guest_port} is not forwarded; "
                f"forwarded guest ports: {sorted(forwards) or 'none'}"
            )
        return forwards[guest_port]

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
        self.log = log.getChild(self.name)
        self.timings: dict[str, float] = {}
        _open_labs.add(self)

    # -- building ---------------------------------------------------------------------
    def _ensure_namespace(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.name} is closed")
        if not self.namespace.created:
            self.namespace.create()
            self.workdir.mkdir(parents=True, exist_ok=True)

    def bridge(self, name: str) -> Bridge:
        """Create bridge *name* (up, STP off) in the lab namespace.

        Raises:
            ConfigError: a bad or duplicate name.
        """
        validation.interface_name(name, "bridge name")
        if name in self.bridges:
            raise ConfigError(f"bridge {name!r} exists already in this lab: give each bridge its own name")
        self._ensure_namespace()
        self.namespace.add_bridge(name)
        bridge = Bridge(self, name, len(self.bridges) + 1)
        self.bridges[name] = bridge
        return bridge

    def vm(
        self, name: str, nics: Sequence[Bridge | NicSpec] = (), *, role: str = "host",
        memory: int = 128, cpus: int = 1, kernel: str | Path | None = None,
        initrd: str | Path | None = None, rootfs: str | Path | None = None,
        append: str = "", disks: Sequence[str | Path] = (),
    ) -> VM:
        """Declare guest *name*; it boots at the next ``start()``.

        Each entry of *nics* is a bridge of this lab (a virtio-net NIC on a new TAP of
        it) or ``bridge.nic(...)`` with options. In the guest they are ``eth0``,
        ``eth1``... in this order.

        Raises:
            ConfigError: bad or duplicate name, a bridge of another lab, duplicate MACs
                or TAP names, sizes out of range, unreadable kernel or disk.
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
                if nic.bridge not in self.bridges:
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
            append=append, disks=[Path(d) for d in disks],
        ).validated()
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
            if nic.tap is None:
                ports[nic.bridge] += 1
                tap = tap_name(self.bridges[nic.bridge].number, ports[nic.bridge])
            else:
                tap = nic.tap
            if tap in self._taps or tap in taps or tap in self.bridges:
                raise ConfigError(f"TAP name {tap!r} of {name!r} is already used in this lab")
            taps.append(tap)
        for nic in specs:
            self.bridges[nic.bridge].ports += 1
        self._macs.update(macs)
        self._taps.update(taps)
        cls = Router if role == "router" else VM
        vm = cls(self, spec, number, macs, taps)
        self.vms[name] = vm
        return vm

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
        if spec.kernel is None and not spec.disks and self.settings.boot == "snapshot" and store:
            layout = Layout(
                spec.memory, spec.cpus, self.settings.accel,
                tuple(NicLayout(n.model, n.queues, n.vectors) for n in spec.nics),
            )
            image = self._image_for(vm)
            config = store.machine_config(layout, image, spec.name)
            config.incoming = store.state(layout, image, self.settings.boot_timeout)
        else:
            config = self._cold_config(vm)
        for nic, spec_nic, tap in zip(config.nics, spec.nics, vm.taps, strict=True):
            nic.fds = self.namespace.add_tap(tap, spec_nic.bridge, spec_nic.queues)
        return config

    def _image_for(self, vm: VM) -> GuestImage:
        """The default image, or its variant whose kernel drives the VM's NIC models."""
        return self.image.for_modules(nic_modules([n.model for n in vm.spec.nics]))

    def _cold_config(self, vm: VM) -> MachineConfig:
        spec = vm.spec
        models = [n.model for n in spec.nics]
        image = self._image_for(vm) if spec.kernel is None else self.image
        cmdline = guest_cmdline(image, spec.name, vm.macs, models)
        if spec.kernel is not None:
            # a kernel of the user's own: only the console and the netlab.* contract
            cmdline = cmdline.replace(image.cmdline, "console=ttyS0", 1)
        params = [cmdline, f"netlab.keytype={self.key.keytype}", f"netlab.key={self.key.blob}"]
        drives = []
        if spec.rootfs is not None:
            params.append("root=/dev/vda rw")
            drives.append(f"file={spec.rootfs},if=virtio,format={_disk_format(spec.rootfs)},snapshot=on")
        for disk in spec.disks:
            drives.append(f"file={disk},if=virtio,format={_disk_format(disk)},snapshot=on")
        if spec.append:
            params.append(spec.append)
        return MachineConfig(
            name=spec.name, kernel=spec.kernel or image.kernel,
            initrd=spec.initrd if spec.kernel else image.initrd, cmdline=" ".join(params),
            memory_mib=spec.memory, cpus=spec.cpus, accel=self.settings.accel,
            nics=[NicConfig(mac=mac, model=n.model, vectors=n.vectors)
                  for mac, n in zip(vm.macs, spec.nics, strict=True)],
            drives=drives,
        )

    def start(self, timeout: float | None = None) -> None:
        """Boot every declared guest that is not running yet, all at once; return when
        each answers SSH.

        Raises:
            BootTimeout: a guest did not come up within *timeout* seconds.
            QemuError: a QEMU process failed; the message has its command line and output.
            SSHError: a guest came up but SSH to it failed.
        """
        if threading.get_ident() != self._owner:
            raise LabError("start() must be called from the thread that made the lab")
        pending = [vm for vm in self.vms.values() if vm.machine is None]
        if not pending:
            return
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
                machine.write_console(
                    config_line(vm.name, vm.macs, self.key.keytype, self.key.blob, host_key)
                )
        self.log.info("launched %s in %.2f s", ", ".join(v.name for v in pending), time.monotonic() - started)
        ports = {vm.name: vm.host_port(22) for vm in pending}

        def bring_up(vm: VM) -> None:
            assert vm.machine is not None
            vm.machine.wait_ready(boot_timeout - (time.monotonic() - started))
            assert vm.machine.host_key is not None
            session = SSHSession(vm.name, ports[vm.name], self.key, vm.machine.host_key)
            session.connect(self.settings.ssh_timeout)
            vm._ssh = session
            vm.log.info("ready: SSH on 127.0.0.1:%d after %.2f s", ports[vm.name], time.monotonic() - started)

        with ThreadPoolExecutor(max_workers=len(pending), thread_name_prefix="boot") as pool:
            futures = [pool.submit(bring_up, vm) for vm in pending]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            raise failed[0]
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


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def _disk_format(path: Path) -> str:
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"


def _host_or_address(value: object) -> str:
    if isinstance(value, str) and value and all(c.isalnum() or c in ".-:" for c in value):
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
