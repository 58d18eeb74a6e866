"""A lab: one network namespace with bridges and TAPs, and QEMU guests on them.

:class:`Lab` is what the ``netlab`` fixture gives a test. It owns every resource it
creates and ``close()`` removes them in reverse order, logging each failure and going
on, then raising once at the end. Its bridges are :mod:`pytest_netlab.bridge`, its
guests :mod:`pytest_netlab.guest`.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import validation
from .addressing import (
    AddressPlan,
    GuestRequest,
    NicRequest,
    check_overlaps,
    parse_subnets,
)
from .bridge import Bridge
from .budget import Budget, Claim
from .constants import NAMESPACE_PREFIX, Accelerator, BootMode, Role
from .errors import CommandError, ConfigError, LabError, NetlabError, StateLoadError
from .guest import VM, Router
from .guest_protocol import (
    DISK_ROOT,
    MGMT_MAC,
    GuestHostKey,
    config_line,
    guest_cmdline,
    key_params,
    nic_modules,
)
from .image import GuestImage
from .netns import HostCommandResult, LabNamespace
from .nicmodels import DEFAULT_NIC_MODEL
from .pcap import Capture, tcpdump_argv, wait_listening
from .privileges import qemu_identity
from .qemu import FsShare, MachineConfig, NicConfig, QemuMachine, find_qemu, option_value
from .shares import SHARE_MODULES, Share, mount_script, share_tag, shares_of
from .shares import share as checked_share
from .ssh import SessionKey, SSHSession
from .templates import Layout, NicLayout, TemplateStore
from .topology import GuestSpec, NicSpec, lab_mac, tap_name
from .traffic import PingMatrix, answered, ping_all_command
from .untrusted import DEFAULT_OUTPUT_LIMIT

log = logging.getLogger(__name__)

CAPTURE_SETTLE = 0.2  # seconds
SSH_HANDSHAKE_MIN = 5.0  # seconds
_lab_numbers = itertools.count(1)
_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


@dataclass(frozen=True)
class LabSettings:
    """How a lab boots its guests; the plugin fills it from options and ini values."""

    accel: Accelerator = "tcg"
    boot: BootMode = "snapshot"  # or "cold": see pytest_netlab.templates
    templates: TemplateStore | None = None
    boot_timeout: float = 120.0
    command_timeout: float = 60.0
    pcap: bool = False  # record every bridge to a pcap file (see Lab.record_bridges)
    progress: Callable[[str], None] | None = None  # where a package image build reports its steps
    budget: Budget | None = None  # the machine-wide guest budget (None: no limit)
    # bytes kept of each stream of a command's output and of each console log
    output_limit: int = DEFAULT_OUTPUT_LIMIT


def namespace_name(pid: int, number: int) -> str:
    """Lab namespace names carry their owner's pid, so leftovers of dead runs are known."""
    return f"{NAMESPACE_PREFIX}{pid}-{number}"


class Lab:
    """One isolated network lab. Made by the ``netlab`` fixture; see the README."""

    def __init__(
        self, workdir: Path, image: GuestImage, key: SessionKey,
        settings: LabSettings | None = None, name: str | None = None,
    ) -> None:
        self.number = next(_lab_numbers)
        self.name = name or namespace_name(os.getpid(), self.number)
        self.workdir = workdir
        self.default_image = image  # guests without image= boot this one
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
        self.claim = Claim(self.settings.budget, self.name)  # its part of the guest budget
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

    def nat(
        self, *, model: str = DEFAULT_NIC_MODEL, mac: str | None = None,
        host_ports: Sequence[int] = (), outside: bool = False,
    ) -> NicSpec:
        """A user-mode (slirp) NAT NIC, for ``nics=[...]``: the guest gets 10.0.2.15 by
        DHCP from QEMU (e.g. ``udhcpc -i eth0``). A guest with such a NIC cold-boots
        (no saved state).

        The NIC is restricted: through it the guest reaches nothing on the host or
        beyond (QEMU's DHCP offers no default route), but each of *host_ports*: port
        ``P`` is ``NAT_HOST:P`` (``pytest_netlab.NAT_HOST``, 10.0.2.100) in the guest and
        the host's ``127.0.0.1:P``. ``outside=True`` lifts the restriction: the default
        route points at the gateway 10.0.2.2, which is the host's loopback with every
        service on it, and through NAT the guest reaches other machines; tests here never
        use it to reach anything but loopback.

        Raises:
            ConfigError: an unknown model, a malformed MAC, a bad or repeated port.
        """
        ports = tuple(host_ports) if isinstance(host_ports, (list, tuple)) else host_ports
        if not isinstance(ports, tuple):
            raise ConfigError(f"host_ports={host_ports!r} is not accepted: give a list of port numbers")
        return NicSpec(None, model, mac, host_ports=ports, outside=outside).validated()

    def share(self, host: str | os.PathLike[str], guest: str, *, rw: bool = False) -> Share:
        """A host directory for ``vm(..., shares=[...])``: *host* (absolute) is seen at
        *guest* in the guest, read-only unless *rw* (see :mod:`pytest_netlab.shares`).

        Raises:
            ConfigError: a bad host or guest path (see :func:`~pytest_netlab.shares.shares_of`).
        """
        return checked_share(host, guest, rw=rw)

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
            capture.load()

    def evidence_files(self) -> list[Path]:
        """Files worth keeping when a test fails: pcaps and the logs of daemons."""
        found = [p for p in self.pcap_dir.glob("*.pcap")] if self.pcap_dir.exists() else []
        if self.workdir.exists():
            found += sorted(self.workdir.glob("*.log"))
        return found

    def vm(
        self, name: str, nics: Sequence[Bridge | NicSpec] = (), *, role: Role = "host",
        memory: int = 128, cpus: int = 1, kernel: str | Path | None = None,
        initrd: str | Path | None = None, rootfs: str | Path | None = None,
        append: str = "", disks: Sequence[str | Path] = (), network: bool = True,
        forwards: Sequence[int] = (), numa: bool = False, aslr: bool = False,
        gateway: str | None = None, image: GuestImage | None = None,
        shares: Mapping[str | os.PathLike[str], str] | Sequence[Share] = (),
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

        *image*: what the guest runs, e.g. ``netlab.image(packages=["frr"])`` (see
        :meth:`image`); default: the lab's default image.
        *shares*: host directories mounted in the guest at start (virtio-9p; the guest
        runs the ``generic`` image, whose kernel has 9p): ``{"/abs/host/dir":
        "/mnt/dir"}`` read-only, or a list of :meth:`share` (``rw=True`` for writable).

        Raises:
            ConfigError: bad or duplicate name, a bridge of another lab, duplicate MACs,
                TAP names or addresses, sizes out of range, unreadable kernel or disk,
                a bad gateway, bad or duplicate share paths.
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
            forwards=list(forwards), numa=numa, aslr=aslr, gateway=gateway, image=image,
            shares=shares_of(shares, name),
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
        vm = cls(self, spec, macs, taps)
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

    def image(self, packages: str | Sequence[str]) -> GuestImage:
        """The image of the default guest plus the Debian *packages* (a list, or one
        comma-separated string), for ``vm(..., image=)``: built once (a minute or two),
        then cached and shared by every test process. See docs/package-images.md.

        Raises:
            ConfigError: a bad package name, or packages apt cannot install (with
                apt's message), before anything is built.
            ImageError: the build failed.
        """
        from .package_image import package_image

        return package_image(packages, base=self.default_image, progress=self.settings.progress)

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
                numa=spec.numa, shares=len(spec.shares),
            )
            image = self._image_for(vm)
            template = store.template(layout, image, self.settings.boot_timeout)
            config = store.machine_config(layout, image, spec.name)
            config.incoming = template.state
            config.memory_file = template.clone_memory()  # its RAM: the template's, copy-on-write
        else:
            config = self._cold_config(vm)
        config.shares = [FsShare(s.host, share_tag(i), readonly=not s.rw) for i, s in enumerate(spec.shares)]
        tap_nics = [(nic, s) for nic, s in zip(config.nics, spec.nics, strict=True) if s.bridge is not None]
        for (nic, spec_nic), tap in zip(tap_nics, vm.taps, strict=True):
            assert spec_nic.bridge is not None
            nic.fds = self.namespace.add_tap(tap, spec_nic.bridge, spec_nic.queues, spec_nic.mtu)
        return config

    def _resume(self, vm: VM) -> None:
        """Load the saved state *vm* was launched with and resume it. A state QEMU refuses
        (a damaged file) is removed, made again with one cold boot, and loaded once more.

        Raises:
            LabError: the state could not be loaded, or was refused twice.
        """
        machine = vm.machine
        assert machine is not None and machine.config.incoming is not None
        state = machine.config.incoming
        try:
            machine.finish_incoming()
            return
        except StateLoadError as exc:
            vm.log.warning("QEMU refused the saved state %s; making it again: %s",
                           state, str(exc).splitlines()[0])
            state.unlink(missing_ok=True)
            machine.shutdown()  # its TAPs go with it; the new machine gets new ones
        vm.machine = QemuMachine(
            self._machine_config(vm), self.workdir / vm.name, console_limit=self.settings.output_limit
        )
        vm.machine.launch()
        try:
            vm.machine.finish_incoming()
        except StateLoadError as exc:
            state.unlink(missing_ok=True)
            raise LabError(
                f"{vm.name}: QEMU refused the saved guest state {state} again after it was made "
                "afresh; run with --netlab-boot=cold and look at the QEMU output below\n" + str(exc)
            ) from exc

    def _image_for(self, vm: VM) -> GuestImage:
        """The guest's image (``image=``, else the lab's default), or its variant whose
        kernel drives the VM's NIC models and, for shares, has 9p."""
        modules = nic_modules([n.model for n in vm.spec.nics])
        image = vm.spec.image or self.default_image
        return image.for_modules([*modules, *(SHARE_MODULES if vm.spec.shares else ())])

    def _cold_config(self, vm: VM) -> MachineConfig:
        spec = vm.spec
        models = [n.model for n in spec.nics]
        image = self._image_for(vm) if spec.kernel is None else self.default_image
        cmdline = guest_cmdline(
            image, spec.name, vm.macs, models, management=spec.network, aslr=spec.aslr,
            cpus=spec.cpus,
            # a kernel of the user's own: only the console and the netlab.* contract
            base="console=ttyS0" if spec.kernel is not None else None,
        )
        params = [cmdline, *key_params(self.key.keytype, self.key.blob)]
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
            memory_mib=spec.memory, cpus=spec.cpus, accel=self.settings.accel,
            nics=[NicConfig(mac=mac, model=n.model, vectors=n.vectors, nat=n.nat,
                            host_ports=n.host_ports, outside=n.outside)
                  for mac, n in zip(vm.macs, spec.nics, strict=True)],
            drives=drives, management=spec.network, numa=spec.numa,
        )

    def _mount_shares(self, vm: VM) -> None:
        """Mount *vm*'s shares, now that it is up (a resumed guest: after the resume, so
        no mount is ever in a saved state).

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
        qemu_identity()  # so is a root run without an unprivileged user to run it as
        setups = self._plan_addresses(pending)  # so is an address plan that cannot work
        self._ensure_namespace()
        admitted = time.monotonic()
        self.claim.admit([vm.spec.memory for vm in pending])  # may wait for room (see budget)
        self.timings["admission"] = time.monotonic() - admitted
        boot_timeout = timeout or self.settings.boot_timeout
        started = time.monotonic()
        machines = []
        for vm in pending:
            vm.machine = QemuMachine(
                self._machine_config(vm), self.workdir / vm.name, console_limit=self.settings.output_limit
            )
            vm.machine.launch()
            machines.append(vm.machine)
        for vm, machine in zip(pending, machines, strict=True):
            if machine.config.incoming is not None:
                self._resume(vm)
                assert vm.machine is not None
                host_key = GuestHostKey.generate()
                # the key the host made is the one pinned: nothing the guest prints changes it
                vm.machine.expect_host_key(host_key.public_line)
                vm.machine.write_console(config_line(
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
                self._mount_shares(vm)
                vm.log.info("ready (no network, console only) after %.2f s", time.monotonic() - started)
                return
            assert vm.machine.host_key is not None
            session = SSHSession(
                vm.name, ports[vm.name], self.key, vm.machine.host_key,
                output_limit=self.settings.output_limit,
            )
            # the boot timeout is how long a guest may take to answer SSH: the handshake
            # gets what is left of it (at least a few seconds, once the guest said ready)
            session.connect(max(SSH_HANDSHAKE_MIN, boot_timeout - (time.monotonic() - started)))
            vm._ssh = session
            self._mount_shares(vm)
            if vm.name in setups:
                # addresses, default route and /etc/hosts: one command, one round trip
                try:
                    vm.ssh(setups[vm.name])
                except CommandError as exc:  # the lab could not be built, not a test failure
                    raise LabError(
                        f"{vm.name}: setting the planned addresses failed (the guest needs "
                        f"iproute2's ip and sed): {exc}"
                    ) from exc
            vm._apply_nic_settings()  # MTUs and pulled cables (bridge.nic(mtu=, up=))
            # impairments asked for before start() apply before the test's first command
            for index, impairment in vm.impairments.items():
                if not impairment.none:
                    vm._apply_impairment(index, impairment)
            vm.log.info("ready: SSH on 127.0.0.1:%d after %.2f s", ports[vm.name], time.monotonic() - started)

        with ThreadPoolExecutor(max_workers=len(pending), thread_name_prefix="boot") as pool:
            futures = [pool.submit(bring_up, vm) for vm in pending]
            errors = [f.exception() for f in futures]
        self.claim.booted()
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
        """Run a command on the lab's host side (inside the lab namespace). What it
        leaves running in the background is killed when the lab closes.

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
        self.claim.release()
        _open_labs.discard(self)
        self.timings["teardown"] = time.monotonic() - started
        if failures:
            raise LabError(f"teardown of lab {self.name} failed: " + "; ".join(failures))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping_all(
        self, vms: Sequence[VM] | None = None, *, count: int = 1, wait: float = 3,
    ) -> PingMatrix:
        """Ping from each guest every other one (its first lab address), like Mininet's
        ``pingAll``: one SSH command per guest that pings all the others at once, the
        guests in parallel. *vms*: those guests (default: every started guest that has
        a lab address). Returns a :class:`~pytest_netlab.traffic.PingMatrix`.

        Raises:
            ConfigError: a bad *count* or *wait*.
            LabError: fewer than two guests, or one of *vms* is not started or has no
                lab address.
        """
        validation.int_in_range(count, 1, 100, what="ping count")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 < wait <= 60:
            raise ConfigError(f"wait={wait!r} is not accepted: give the seconds to wait for a reply, 0 to 60")
        guests = list(vms) if vms is not None else [
            vm for vm in self.vms.values() if vm.started and vm.spec.network and vm.addresses
        ]
        if len(guests) < 2:
            raise LabError(
                f"ping_all needs two or more guests with lab addresses, found {len(guests)}: "
                "give their bridges a subnet (or NICs an address), and start them"
            )
        addresses = {vm.name: vm.address() for vm in guests}

        def row(vm: VM) -> dict[str, bool]:
            others = [n for n in addresses if n != vm.name]
            command = ping_all_command([addresses[n] for n in others], count=count, wait=wait)
            ok = answered(vm.ssh(command, timeout=count * wait + 60).stdout)
            return {n: addresses[n] in ok for n in others}

        with ThreadPoolExecutor(max_workers=max(1, min(len(guests), 8))) as pool:
            rows = list(pool.map(row, guests))
        return PingMatrix({vm.name: r for vm, r in zip(guests, rows, strict=True)})

    def __repr__(self) -> str:
        return f"<Lab {self.name}: bridges {list(self.bridges)}, guests {list(self.vms)}>"


def open_labs() -> list[Lab]:
    """The labs of this process that are not closed, oldest first."""
    return sorted(_open_labs, key=lambda lab: lab.number)


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def drive_option(disk: Path) -> str:
    """``-drive`` for a user's *disk*; ``snapshot=on``: writes go to a temporary overlay."""
    return f"file={option_value(disk)},if=virtio,format={_disk_format(disk)},snapshot=on"


def _disk_format(path: Path) -> str:
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"


@atexit.register
def _close_leftover_labs() -> None:
    """Last line of defence: a lab still open when Python exits is closed."""
    for lab in list(_open_labs):
        try:
            lab.close()
        except NetlabError as exc:
            log.error("closing %s at exit: %s", lab.name, exc)
