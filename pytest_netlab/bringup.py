"""Bringing guests up: the whole sequence of one guest, from its machine configuration to
the guest answering SSH with its addresses, shares and impairments set.

A guest comes up one of two ways, a :class:`BootStrategy` each: :class:`Resumed` (from a
template's saved state, see :mod:`pytest_netlab.templates`) or :class:`ColdBoot` (its
kernel boots; see :func:`pytest_netlab.guest_protocol.guest_cmdline`). :func:`strategy`
picks one. :class:`BringUp` runs the sequence of every guest of one ``start()``, each in a
thread of its own that stays the guest's until teardown: QEMU dies with the thread that
launched it, and QMP is used from that thread (see :mod:`pytest_netlab.qemu`). Launching
and resuming, the part that needs the CPUs, take one of the budget's booting slots.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import BootTimeout, CommandError, LabError, NetlabError, QemuError, SSHError, StateLoadError
from .guest_protocol import DISK_ROOT, GuestHostKey, config_line, guest_cmdline, key_params, nic_modules
from .image import GuestImage
from .netns import LabNamespace
from .qemu import FsShare, MachineConfig, NicConfig, QemuMachine, option_value
from .shares import SHARE_MODULES, mount_script, share_tag
from .ssh import SessionKey, SSHSession
from .templates import Layout, NicLayout

if TYPE_CHECKING:
    from .guest import VM
    from .labcontext import LabSettings

SSH_HANDSHAKE_MIN = 5.0  # seconds


@dataclass
class GuestContext:
    """What bringing a guest up needs of its lab, and nothing more."""

    namespace: LabNamespace
    settings: LabSettings
    workdir: Path
    key: SessionKey
    default_image: GuestImage
    # TAPs are made through the namespace's one netlink socket: one thread at a time
    netlink: threading.Lock = field(default_factory=threading.Lock)

    def image_for(self, vm: VM) -> GuestImage:
        """The guest's image (``image=``, else the lab's default), or its variant whose
        kernel drives the VM's NIC models and, for shares, has 9p."""
        modules = nic_modules([n.model for n in vm.spec.nics])
        image = vm.spec.image or self.default_image
        return image.for_modules([*modules, *(SHARE_MODULES if vm.spec.shares else ())])


class BootStrategy(Protocol):
    """How a guest's QEMU is configured and brought to running its kernel."""

    context: GuestContext

    def config(self, vm: VM) -> MachineConfig:
        """The machine, without its TAPs and shares (:func:`machine_config` adds them)."""
        ...

    def launched(self, vm: VM, machine: QemuMachine, runner: ThreadPoolExecutor) -> QemuMachine:
        """Bring the launched *machine* to running its kernel; return the machine that runs."""
        ...


@dataclass
class ColdBoot:
    """The guest's kernel boots with the command line of the guest protocol."""

    context: GuestContext

    def config(self, vm: VM) -> MachineConfig:
        spec, ctx = vm.spec, self.context
        image = ctx.image_for(vm) if spec.kernel is None else ctx.default_image
        cmdline = guest_cmdline(
            image, spec.name, vm.macs, [n.model for n in spec.nics], management=spec.network,
            aslr=spec.aslr, cpus=spec.cpus,
            # a kernel of the user's own: only the console and the netlab.* contract
            base="console=ttyS0" if spec.kernel is not None else None,
        )
        params = [cmdline, *key_params(ctx.key.keytype, ctx.key.blob)]
        if spec.rootfs is not None:
            params.append(DISK_ROOT)
        # a package image's root disk first (/dev/vda), then the user's disks
        drives = image.drives() if spec.kernel is None else []
        disks = ([spec.rootfs] if spec.rootfs is not None else []) + spec.disks
        drives += [drive_option(disk) for disk in disks]
        if spec.append:
            params.append(spec.append)
        return MachineConfig(
            name=spec.name, kernel=spec.kernel or image.kernel,
            initrd=spec.initrd if spec.kernel else image.initrd, cmdline=" ".join(params),
            memory_mib=spec.memory, cpus=spec.cpus, accel=ctx.settings.accel,
            nics=[NicConfig(mac=mac, model=n.model, vectors=n.vectors, nat=n.nat,
                            host_ports=n.host_ports, outside=n.outside)
                  for mac, n in zip(vm.macs, spec.nics, strict=True)],
            drives=drives, management=spec.network, numa=spec.numa,
        )

    def launched(self, vm: VM, machine: QemuMachine, runner: ThreadPoolExecutor) -> QemuMachine:
        return machine  # it boots by itself


@dataclass
class Resumed:
    """The guest resumes a template's saved state, its RAM mapped copy-on-write, and is
    told who it is on the console (``NETLAB-CONFIG``)."""

    context: GuestContext

    def config(self, vm: VM) -> MachineConfig:
        spec, ctx = vm.spec, self.context
        store = ctx.settings.templates
        assert store is not None
        layout = Layout(
            spec.memory, spec.cpus, ctx.settings.accel,
            tuple(NicLayout(n.model, n.queues, n.vectors) for n in spec.nics),
            numa=spec.numa, shares=len(spec.shares),
        )
        image = ctx.image_for(vm)
        template = store.template(layout, image, ctx.settings.boot_timeout)
        config = store.machine_config(layout, image, spec.name)
        config.incoming = template.state
        config.memory_file = template.clone_memory()  # its RAM: the template's, copy-on-write
        return config

    def launched(self, vm: VM, machine: QemuMachine, runner: ThreadPoolExecutor) -> QemuMachine:
        machine = self._resume(vm, machine, runner)
        host_key = GuestHostKey.generate()
        # the key the host made is the one pinned: nothing the guest prints changes it
        machine.marks.pin_host_key(host_key.public_line)
        key = self.context.key
        machine.write_console(config_line(vm.name, vm.macs, key.keytype, key.blob, host_key,
                                          aslr=vm.spec.aslr))
        return machine

    def _resume(self, vm: VM, machine: QemuMachine, runner: ThreadPoolExecutor) -> QemuMachine:
        """Load the saved state *machine* was launched with and resume it. A state QEMU
        refuses (a damaged file) is removed, made again with one cold boot, and loaded
        once more.

        Raises:
            LabError: the state could not be loaded, or was refused twice.
        """
        state = machine.config.incoming
        assert state is not None
        try:
            machine.finish_incoming()
            return machine
        except StateLoadError as exc:
            vm.log.warning("QEMU refused the saved state %s; making it again: %s",
                           state, str(exc).splitlines()[0])
            state.unlink(missing_ok=True)
            machine.shutdown()  # its TAPs go with it; the new machine gets new ones
        machine = launch(vm, self, runner)
        try:
            machine.finish_incoming()
        except StateLoadError as exc:
            state.unlink(missing_ok=True)
            raise LabError(
                f"{vm.name}: QEMU refused the saved guest state {state} again after it was made "
                "afresh; run with --netlab-boot=cold and look at the QEMU output below\n" + str(exc)
            ) from exc
        return machine


def strategy(vm: VM, context: GuestContext) -> BootStrategy:
    """Resumed when *vm* runs the default kernel with TAP NICs only, else a cold boot.

    Saved states have TAP NICs and a management NIC only: NAT NICs and guests without
    network have other devices, so they cold-boot; a resumed kernel keeps the
    template's command line, so guests with parameters of their own too.
    """
    spec, settings = vm.spec, context.settings
    resumable = spec.network and not any(n.nat for n in spec.nics) and not spec.append
    if (spec.kernel is None and not spec.disks and resumable
            and settings.boot == "snapshot" and settings.templates):
        return Resumed(context)
    return ColdBoot(context)


def machine_config(vm: VM, boot: BootStrategy, context: GuestContext) -> MachineConfig:
    """*boot*'s configuration of *vm* with its shares and its TAPs, opened now in the lab
    namespace."""
    config = boot.config(vm)
    config.shares = [FsShare(s.host, share_tag(i), readonly=not s.rw) for i, s in enumerate(vm.spec.shares)]
    tap_nics = [(nic, s) for nic, s in zip(config.nics, vm.spec.nics, strict=True) if s.bridge is not None]
    for (nic, spec_nic), tap in zip(tap_nics, vm.taps, strict=True):
        assert spec_nic.bridge is not None
        with context.netlink:
            nic.fds = context.namespace.add_tap(tap, spec_nic.bridge, spec_nic.queues, spec_nic.mtu)
    return config


def launch(vm: VM, boot: BootStrategy, runner: ThreadPoolExecutor) -> QemuMachine:
    """Launch *vm*'s QEMU in this thread (the one *runner* runs) and attach it to *vm*."""
    context = boot.context
    machine = QemuMachine(machine_config(vm, boot, context), context.workdir / vm.name,
                          console_limit=context.settings.output_limit, runner=runner)
    vm.attach(machine)
    machine.launch()
    return machine


class BringUp:
    """The bring-up of the guests of one ``start()``: each in its own thread, at most
    *slots* launching or resuming at once; :meth:`run` reports every guest that failed."""

    def __init__(
        self, context: GuestContext, setups: Mapping[str, str], boot_timeout: float, slots: int,
    ) -> None:
        self.context = context
        self.setups = setups  # guest name -> the address plan's script for it
        self.boot_timeout = boot_timeout
        self.slots = threading.Semaphore(max(slots, 1))
        self.started = time.monotonic()

    def submit(self, vms: Sequence[VM], runners: Mapping[str, ThreadPoolExecutor]) -> dict[str, Future[None]]:
        """Start bringing every guest of *vms* up, each by its runner."""
        return {vm.name: runners[vm.name].submit(self.one, vm, runners[vm.name]) for vm in vms}

    @staticmethod
    def wait(futures: Mapping[str, Future[None]]) -> None:
        """Wait for every bring-up of *futures*.

        Raises:
            BootTimeout, QemuError, SSHError, LabError: one or more guests failed; one
                error of the kind they share (else ``LabError``) lists each guest and why.
        """
        errors: dict[str, BaseException] = {}
        for name, future in futures.items():
            exc = future.exception()
            if exc is not None:
                errors[name] = exc
        if errors:
            raise combined(errors)

    def one(self, vm: VM, runner: ThreadPoolExecutor) -> None:
        """The whole sequence of *vm*, in its runner's thread."""
        boot = strategy(vm, self.context)
        with self.slots:  # launching and resuming need the CPUs (launch() attaches each machine)
            machine = boot.launched(vm, launch(vm, boot, runner), runner)
        for guest_port in vm.spec.forwards:
            vm.forward_port(guest_port)
        machine.wait_ready(self.boot_timeout, since=self.started)
        if not vm.spec.network:
            vm.console_only()
            mount_shares(vm)
            vm.log.info("ready (no network, console only) after %.2f s", time.monotonic() - self.started)
            return
        port = self._connect(vm, machine)
        mount_shares(vm)
        self._set_addresses(vm)
        vm.apply_nic_settings()  # MTUs and cables pulled at start (bridge.nic(mtu=, up=))
        # impairments asked for before start() apply before the test's first command
        with self.context.netlink:  # a TAP's qdisc is set through the namespace's netlink socket
            vm.apply_impairments()
        vm.log.info("ready: SSH on 127.0.0.1:%d after %.2f s", port, time.monotonic() - self.started)

    def _connect(self, vm: VM, machine: QemuMachine) -> int:
        """Connect SSH to *vm* with its pinned host key; return the host port."""
        host_key = machine.marks.host_key
        assert host_key is not None
        port = vm.host_port(22)
        session = SSHSession(vm.name, port, self.context.key, host_key,
                             output_limit=self.context.settings.output_limit)
        # the boot timeout is how long a guest may take to answer SSH: the handshake
        # gets what is left of it (at least a few seconds, once the guest said ready)
        left = self.boot_timeout - (time.monotonic() - self.started)
        session.connect(max(SSH_HANDSHAKE_MIN, left))
        vm.connected(session)
        return port

    def _set_addresses(self, vm: VM) -> None:
        script = self.setups.get(vm.name)
        if script is None:
            return
        # addresses, default route and /etc/hosts: one command, one round trip
        try:
            vm.ssh(script)
        except CommandError as exc:  # the lab could not be built, not a test failure
            raise LabError(
                f"{vm.name}: setting the planned addresses failed (the guest needs "
                f"iproute2's ip and sed): {exc}"
            ) from exc


def mount_shares(vm: VM) -> None:
    """Mount *vm*'s shares, now that it is up (a resumed guest: after the resume, so no
    mount is ever in a saved state).

    Raises:
        LabError: the guest could not mount them.
    """
    if not vm.spec.shares:
        return
    script = mount_script(vm.spec.shares)
    try:
        if vm.spec.network:
            vm.ssh(script)
        else:
            vm.console_run(script)
    except CommandError as exc:  # the lab could not be built, not a test failure
        hint = " (a kernel of its own needs 9p and 9pnet_virtio)" if vm.spec.kernel else ""
        raise LabError(f"{vm.name}: mounting its shares failed{hint}: {exc}") from exc


_KINDS: tuple[type[NetlabError], ...] = (BootTimeout, SSHError, QemuError)


def combined(errors: Mapping[str, BaseException]) -> BaseException:
    """One error for the guests that failed: the error itself when one guest failed; else
    one listing each guest and why, of the kind they all share (``BootTimeout``,
    ``SSHError``, ``QemuError``), else a ``LabError``. Not a lab failure (e.g. a bug) is
    raised as it is."""
    if len(errors) == 1:
        return next(iter(errors.values()))
    for exc in errors.values():
        if not isinstance(exc, NetlabError):
            return exc
    kind: type[NetlabError] = LabError
    for candidate in _KINDS:
        if all(isinstance(e, candidate) for e in errors.values()):
            kind = candidate
            break
    lines = "\n".join(f"- {name}: {exc}" for name, exc in errors.items())
    error = kind(f"{len(errors)} guests failed to come up:\n{lines}")
    error.__cause__ = next(iter(errors.values()))
    return error


def drive_option(disk: Path) -> str:
    """``-drive`` for a user's *disk*; ``snapshot=on``: writes go to a temporary overlay."""
    return f"file={option_value(disk)},if=virtio,format={_disk_format(disk)},snapshot=on"


def _disk_format(path: Path) -> str:
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"
