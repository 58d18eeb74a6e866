"""A lab: one network namespace with bridges and TAPs, and QEMU guests on them.

:class:`Lab` is what the ``netlab`` fixture gives a test. It owns every resource it
creates and ``close()`` removes them in reverse order, logging each failure and going
on, then raising once at the end. Its bridges are :mod:`pytest_netlab.bridge`, its
guests :mod:`pytest_netlab.guest`, both given the lab's
:class:`~pytest_netlab.labcontext.LabContext`; :mod:`pytest_netlab.bringup` brings its
guests up.
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
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import validation
from .addressing import (
    Address,
    AddressPlan,
    GuestRequest,
    NicRequest,
    check_overlaps,
    parse_subnets,
)
from .bridge import Bridge
from .bringup import BringUp, GuestContext
from .budget import Claim
from .constants import NAMESPACE_PREFIX, Role
from .errors import ConfigError, LabError, NetlabError
from .guest import VM, Router
from .guest_protocol import (
    MGMT_MAC,
)
from .image import GuestImage
from .labcontext import LabContext, LabSettings
from .netns import HostCommandResult, LabNamespace
from .nicmodels import DEFAULT_NIC_MODEL
from .pcap import Capture, tcpdump_argv, wait_listening
from .privileges import qemu_identity
from .qemu import QemuMachine, find_qemu, release_thread
from .shares import Share, shares_of
from .shares import share as checked_share
from .ssh import SessionKey
from .topology import GuestSpec, NicSpec, lab_mac, tap_name
from .traffic import PingMatrix, answered, ping_all_command

log = logging.getLogger(__name__)

CAPTURE_SETTLE = 0.2  # seconds
_lab_numbers = itertools.count(1)
_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


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
        # what its bridges and guests see of it
        self.context = LabContext(self.name, self.namespace, self.settings, self.workdir, key,
                                  self.plan, self.bridges, self.vms, self._address_owner)
        # each guest's thread, from its bring-up to its shutdown (see pytest_netlab.bringup)
        self._runners: dict[str, ThreadPoolExecutor] = {}
        self._bringing: dict[str, Future[None]] = {}  # the bring-ups of the last start()
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
        bridge = Bridge(self.context, name, len(self.bridges) + 1, subnets)
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
        self._ensure_namespace()
        if (problem := self.namespace.capture_problem()) is not None:
            raise LabError(problem)
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
        gateway: str | None = None, routes: bool = True, image: GuestImage | None = None,
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
        ``routes=False``: the guest's routes are its own (a routing daemon's, e.g. FRR
        or BIRD): it gets its addresses and ``/etc/hosts`` names at start, but none of
        the address plan's routes and no default route (so no *gateway*). The other
        guests' routes through it are planned as usual.

        *image*: what the guest runs, e.g. ``netlab.image(packages=["frr"])`` (see
        :meth:`image`); default: the lab's default image.
        *shares*: host directories mounted in the guest at start (virtio-9p; the guest
        runs the ``generic`` image, whose kernel has 9p): ``{"/abs/host/dir":
        "/mnt/dir"}`` read-only, or a list of :meth:`share` (``rw=True`` for writable).

        Raises:
            ConfigError: bad or duplicate name, a bridge of another lab, duplicate MACs,
                TAP names or addresses, sizes out of range, unreadable kernel or disk,
                a bad gateway, ``routes`` not a bool or ``False`` with a gateway, bad or
                duplicate share paths.
        """
        if name in self.vms:
            raise ConfigError(f"guest {name!r} exists already in this lab: give each guest its own name")
        specs = [self._nic_spec(name, nic) for nic in nics]
        spec = GuestSpec(
            name=name, role=role, nics=specs, memory=memory, cpus=cpus,
            kernel=_path(kernel), initrd=_path(initrd), rootfs=_path(rootfs),
            append=append, disks=[Path(d) for d in disks], network=network,
            forwards=list(forwards), numa=numa, aslr=aslr, gateway=gateway, routes=routes, image=image,
            shares=shares_of(shares, name),
        ).validated()
        self._check_given_addresses(name, specs)
        macs = self._choose_macs(name, specs)
        taps = self._choose_taps(name, specs)
        for nic in specs:
            if nic.bridge is not None:
                self.bridges[nic.bridge].ports += 1
        self._macs.update(macs)
        self._taps.update(taps)
        cls = Router if role == "router" else VM
        vm = cls(self.context, spec, macs, taps)
        self.vms[name] = vm
        return vm

    def _nic_spec(self, name: str, nic: Bridge | NicSpec) -> NicSpec:
        """The NIC spec of an entry of ``vm(nics=...)`` of guest *name*."""
        if isinstance(nic, Bridge):
            if nic.context is not self.context:
                raise ConfigError(
                    f"bridge {nic.name!r} belongs to lab {nic.context.name}, not {self.name}: "
                    "use bridges made by this lab's netlab.bridge()"
                )
            return NicSpec(nic.name)
        if isinstance(nic, NicSpec):
            if nic.bridge is not None and nic.bridge not in self.bridges:
                raise ConfigError(
                    f"NIC on bridge {nic.bridge!r}: this lab has no such bridge "
                    f"(bridges: {', '.join(self.bridges) or 'none'})"
                )
            return nic
        raise ConfigError(
            f"NIC {nic!r} of {name!r} is not accepted: give a bridge of this lab "
            "or bridge.nic(...)"
        )

    def _check_given_addresses(self, name: str, specs: Sequence[NicSpec]) -> None:
        given = [validation.ip_interface(a).ip for nic in specs for a in nic.addresses]
        for address in given:
            owner = self._address_owner(address)
            if owner is not None or given.count(address) > 1:
                raise ConfigError(
                    f"address {address} of {name!r} is used already by {owner or name}: "
                    "give each NIC its own address"
                )

    def _choose_macs(self, name: str, specs: Sequence[NicSpec]) -> list[str]:
        """The MAC of each NIC of guest *name*: its own, else a free one of the lab's."""
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
        return macs

    def _choose_taps(self, name: str, specs: Sequence[NicSpec]) -> list[str]:
        """The TAP name of each bridged NIC of guest *name*: its own, else the next port's."""
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
        return taps

    def _address_owner(self, address: Address) -> str | None:
        """Who has *address* in this lab: a guest's NIC (given or planned) or a bridge's
        host side; ``None`` if it is free (see :meth:`AddressPlan.owners`)."""
        bridges = {b: br.addresses for b, br in self.bridges.items()}
        return self.plan.owners(bridges, list(self._requests().values())).get(address)

    def _requests(self) -> dict[str, GuestRequest]:
        """What each guest of the lab asks of the address plan, in declaration order."""
        return {
            vm.name: GuestRequest(
                vm.name, isinstance(vm, Router),
                tuple(NicRequest(n.bridge, tuple(validation.ip_interface(a) for a in n.addresses))
                      for n in vm.spec.nics),
                vm.spec.gateway,
                vm.spec.routes,
            )
            for vm in self.vms.values()
        }

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
        requests = self._requests()
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
        """Declare a guest that routes (see :class:`Router`, :meth:`VM.enable_forwarding`);
        ``routes=False`` for one whose routes are a routing daemon's (see :meth:`vm`)."""
        vm = self.vm(name, nics, role="router", **options)
        assert isinstance(vm, Router)
        return vm

    # -- booting ----------------------------------------------------------------------
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

        When several guests fail, one error lists each of them and why: of the kind
        they all share, else a ``LabError``.
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
        context = GuestContext(self.namespace, self.settings, self.workdir, self.key, self.default_image)
        bringup = BringUp(context, setups, timeout or self.settings.boot_timeout,
                          self.claim.slots or len(pending))
        for vm in pending:
            self._runners.setdefault(vm.name, ThreadPoolExecutor(1, thread_name_prefix=f"guest-{vm.name}"))
        self._bringing = bringup.submit(pending, self._runners)
        try:
            bringup.wait(self._bringing)
        finally:
            self.claim.booted()
        if setups:
            # guests started earlier learn the new guests' names
            for vm in self.vms.values():
                if vm not in pending and vm.connected_by_ssh:
                    vm.ssh(self.plan.hosts_script())
        self.timings["start"] = time.monotonic() - bringup.started

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
        failures += self._stop_guests()
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

    def _stop_guests(self) -> list[str]:
        """Stop every QEMU, each by the thread that launched it (see pytest_netlab.bringup),
        all at once: every QEMU is asked to quit first, then each is awaited. Return what
        failed."""
        vms = [vm for vm in reversed(self.vms.values()) if vm.machine is not None]
        for vm in vms:
            vm.disconnect()
            if not self._bringing.get(vm.name, _DONE).done():
                # start() was interrupted: its thread may wait for the guest for long
                assert vm.machine is not None
                vm.machine.kill()
        self._each(vms, QemuMachine.request_quit)
        failures = []
        for name, exc in self._each(vms, QemuMachine.shutdown).items():
            failures.append(f"{name}: {exc}")
            self.log.error("stopping %s failed: %s", name, exc)
        for runner in self._runners.values():
            runner.submit(release_thread)
            runner.shutdown()  # each thread ends: its QEMU is gone already
        self._runners.clear()
        return failures

    def _each(self, vms: Sequence[VM], step: Callable[[QemuMachine], None]) -> dict[str, BaseException]:
        """Run *step* on each guest's machine in the guest's thread, all at once; return
        the exceptions, by guest."""
        futures: dict[str, Future[None]] = {}
        for vm in vms:
            assert vm.machine is not None
            futures[vm.name] = _submit(self._runners.get(vm.name), step, vm.machine)
        return {name: exc for name, f in futures.items() if (exc := f.exception()) is not None}

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


_DONE: Future[None] = Future()
_DONE.set_result(None)


def _submit(
    runner: Executor | None, step: Callable[[QemuMachine], None], machine: QemuMachine,
) -> Future[None]:
    """*step* of *machine* submitted to *runner*, or run here (no runner, or one shut down)."""
    if runner is not None:
        try:
            return runner.submit(step, machine)
        except RuntimeError:  # shut down: the interpreter exits
            pass
    future: Future[None] = Future()
    try:
        step(machine)
        future.set_result(None)
    except Exception as exc:  # noqa: BLE001 - given back to the caller in the future
        future.set_exception(exc)
    return future


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None



@atexit.register
def _close_leftover_labs() -> None:
    """Last line of defence: a lab still open when Python exits is closed."""
    for lab in list(_open_labs):
        try:
            lab.close()
        except NetlabError as exc:
            log.error("closing %s at exit: %s", lab.name, exc)
