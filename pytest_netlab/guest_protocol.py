"""What a guest and the plugin agree on: the definition a guest image must follow.

The reference implementation is the default image's ``/init`` (``images/init``); an image
made by someone else works with pytest-netlab when its first program does the same. The
host side is this module (what the console says: :class:`ConsoleMarks`, what is typed on
it: :func:`config_line`, :class:`ConsoleCommand`), used by :mod:`pytest_netlab.bringup`
(what it asks), :mod:`pytest_netlab.qemu` (which hands it the console's lines) and
:mod:`pytest_netlab.templates` (saved states). Everything is
plain text; nothing of the guest's answers is trusted beyond the shapes below.

**Devices.** Lab NICs are PCI NICs of the models in :mod:`pytest_netlab.nicmodels`, in
the order of ``nics=``; the management NIC is a virtio-net NIC with MAC :data:`MGMT_MAC`
on a QEMU user-mode network (:data:`MGMT_NET`, IPv4 only, restricted: it reaches nothing,
the host reaches the guest's TCP port 22 through a forward on 127.0.0.1). The serial port
``ttyS0`` is the console. Disks are virtio block devices.

**Kernel parameters** (``-append``; :func:`guest_cmdline` makes the ``netlab.*`` ones):

``netlab.name=NAME``
    the hostname.
``netlab.nics=MAC0,MAC1,...``
    the interface with MAC *i* is renamed ``eth<i>`` (:func:`guest_ifname`) and left
    down: the lab sets its addresses (:mod:`pytest_netlab.addressing`).
``netlab.mgmt=MAC`` and ``netlab.mgmt_addr=A.B.C.D/NN``
    the interface with that MAC is renamed :data:`MGMT_IFNAME`, set up with that address
    (:data:`MGMT_GUEST_ADDR`) and no route; nothing else is sent through it.
``netlab.keytype=T netlab.key=B64``
    ``T B64`` is root's only authorised SSH key (the session's key).
``netlab.modules=m1,m2``
    kernel modules loaded before the NICs are renamed (:func:`nic_modules`: the drivers
    of the NIC models; :data:`INIT_MODULES` are loaded always and not listed).
``netlab.aslr=0|2``
    ``kernel.randomize_va_space``.
``netlab.template=1``
    become a template: see the configuration line below.
``netlab.debug=1``
    timestamps as ``NETLAB-DEBUG <uptime> <stage>`` console lines.
``root=DEV [init=PATH] [ro]``
    the root file system is on a disk: mount it and run *PATH* (default ``/init``) on it,
    which speaks this protocol again.
``netlab.overlay=1`` (with ``root=DEV ro``)
    a package image: DEV is a read-only root disk (squashfs); mount it under a writable
    tmpfs overlay and switch to it (:data:`OVERLAY_ROOT`, :mod:`pytest_netlab.package_image`).

**Console marks**, each a whole line on ``ttyS0`` (:class:`ConsoleMarks` reads them; the
machine, :class:`pytest_netlab.qemu.QemuMachine`, hands it every console line):

``NETLAB-ERROR <message>`` (:data:`ERROR_MARK`)
    something failed; logged as a warning, the boot goes on.
``NETLAB-HOSTKEY <type> <base64>`` (:data:`HOSTKEY_MARK`, shape :data:`HOST_KEY_LINE`)
    the SSH host key to pin, printed before the ready mark; ignored after it.
``NETLAB-READY`` (:data:`READY_MARK`)
    the SSH server listens on port 22: the host connects now.
``NETLAB-TEMPLATE`` (:data:`TEMPLATE_MARK`)
    with ``netlab.template=1``: booted, console echo off, waiting for a configuration
    line. The host saves the guest's state here and resumes copies of it.

**The console shell.** Once ready, a root ``/bin/sh`` reads ``ttyS0`` (the default
image's ``inittab``: ``ttyS0::respawn:/bin/sh``): the command channel of a guest without
network (``vm.console_run``). The host types ``stty -echo; PS1=''; PS2=''`` and a probe
line until the probe comes back, then each command framed by ``NETLAB-BEGIN-<token>`` and
``NETLAB-END-<token> <status>`` lines that ``printf`` prints (so the typed text never
contains them): :class:`ConsoleCommand`.

**The configuration line** (:func:`config_line`), typed by the host on the console of a
copy resumed from a template, once: ``NETLAB-CONFIG name= nics= keytype= key= hostkey=
hostpub= aslr= seed= time=``: the guest takes the name, the MACs (set on ``eth<i>``), the
authorised key, its own host key (made by the host, :class:`GuestHostKey`: ``hostkey`` is
dropbear's private key file in base64, ``hostpub`` the public blob), ASLR, a random seed
(``seed=``, 64 hex digits) and the wall clock; then it starts SSH and prints the ready mark.
It is typed only after the template mark, which the guest prints only once the console's
echo is off (the line holds a private key).

**The seed.** Every copy of a template starts with the template's kernel CRNG state, so
the copies would hand out the same random bytes (keys, nonces) until the kernel reseeds by
itself. Before it starts SSH, the guest writes ``seed`` into
``/dev/urandom`` (the input pool) and makes the kernel reseed its CRNG from that pool
now: the ``RNDRESEEDCRNG`` ioctl on ``/dev/urandom`` (root; the default image's
``/usr/lib/netlab/reseed``, ``images/reseed.c``), which also rekeys the per-CPU CRNGs. A
guest that cannot (no ``seed``, the ioctl refused) prints ``NETLAB-ERROR`` and powers off
instead of becoming ready. (QEMU's ``vmgenid`` device would do this for a kernel with
``CONFIG_VMGENID``; Debian's cloud kernel has none.)

**Host keys.** A cold-booted guest makes its own Ed25519 host key and prints it
(``NETLAB-HOSTKEY``); a resumed copy gets one made on the host, which is pinned before the
line is typed. SSH accepts no other key.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .nicmodels import NIC_MODELS
from .untrusted import printable

if TYPE_CHECKING:
    from .image import GuestImage

READY_MARK = "NETLAB-READY"
HOSTKEY_MARK = "NETLAB-HOSTKEY "
ERROR_MARK = "NETLAB-ERROR "
TEMPLATE_MARK = "NETLAB-TEMPLATE"
CONFIG_MARK = "NETLAB-CONFIG"
#: a host key as the guest prints it: "ssh-ed25519 AAAA...", nothing else
HOST_KEY_LINE = re.compile(r"^(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) [A-Za-z0-9+/]+={0,2}$")
MGMT_NET = "100.127.255.0/24"
MGMT_GUEST_ADDR = "100.127.255.15/24"
MGMT_MAC = "02:6e:6c:00:00:01"
MGMT_IFNAME = "mgmt0"
#: the root file system on the first virtio disk (a user's rootfs=), see ``root=`` above
DISK_ROOT = "root=/dev/vda rw"
#: a package image's read-only root disk under a tmpfs overlay, see ``netlab.overlay=1`` above
OVERLAY_ROOT = "root=/dev/vda ro netlab.overlay=1"
#: modules the guest's init loads at every boot, whatever it is asked
INIT_MODULES = ("virtio_pci", "virtio_net")


def key_params(keytype: str, key: str) -> list[str]:
    """The kernel parameters that make ``keytype key`` root's authorised SSH key (a cold
    boot; a resumed copy gets the key in its configuration line instead)."""
    return [f"netlab.keytype={keytype}", f"netlab.key={key}"]


def guest_ifname(index: int) -> str:
    """The name in the guest of its NIC at *index* of ``nics=``: ``eth0``, ``eth1``..."""
    return f"eth{index}"


def guest_ifindex(name: str) -> int | None:
    """The index of ``nics=`` that the guest's interface *name* is (``eth2``: 2), else ``None``."""
    number = name.removeprefix("eth")
    return int(number) if number != name and number.isdigit() else None


def nic_modules(models: Sequence[str]) -> list[str]:
    """The guest kernel modules that drive NICs of *models*, beyond :data:`INIT_MODULES`."""
    return sorted({m for model in models for m in NIC_MODELS[model].modules if m not in INIT_MODULES})


def guest_cmdline(
    image: GuestImage, name: str, macs: Sequence[str], models: Sequence[str], *, management: bool = True,
    aslr: bool | None = None, cpus: int = 1, base: str | None = None,
) -> str:
    """The kernel command line of a guest: *base* (default: the image's own parameters)
    and the ``netlab.*`` parameters of the init's contract."""
    if base is None:
        base = image.cmdline
        if cpus == 1:
            # saves ~0.7 s of ACPI interrupt-link evaluation, but the kernel then runs
            # without a local APIC, on one CPU only
            base += " acpi=noirq"
    params = [base, f"netlab.name={name}", f"netlab.nics={','.join(macs)}"]
    if aslr is not None:
        params.append(f"netlab.aslr={2 if aslr else 0}")
    if management:
        params += [f"netlab.mgmt={MGMT_MAC}", f"netlab.mgmt_addr={MGMT_GUEST_ADDR}"]
    modules = nic_modules(models)
    if modules:
        params.append(f"netlab.modules={','.join(modules)}")
    return " ".join(params)


@dataclass(frozen=True)
class GuestHostKey:
    """An Ed25519 SSH host key made on the host for one clone.

    Making it here instead of running ``dropbearkey`` in the guest saves an exec and a
    key generation under emulation on every resume; every clone still gets its own key.
    """

    dropbear_file: bytes  # dropbear's own private key format, as dropbear -r reads it
    public_blob: str  # base64 of the SSH wire-format public key ("AAAAC3Nza...")

    @classmethod
    def generate(cls) -> GuestHostKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        # dropbear's file: string "ssh-ed25519", string (32-byte seed || 32-byte public key)
        return cls(
            dropbear_file=_ssh_string(b"ssh-ed25519") + _ssh_string(private + public),
            public_blob=base64.b64encode(_ssh_string(b"ssh-ed25519") + _ssh_string(public)).decode(),
        )

    @property
    def public_line(self) -> str:
        return f"ssh-ed25519 {self.public_blob}"


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def config_line(
    name: str, macs: Sequence[str], keytype: str, key: str, host_key: GuestHostKey, *, aslr: bool = False,
) -> str:
    """The line typed on a clone's console: who it is now, and its own SSH host key."""
    return (
        f"{CONFIG_MARK} name={name} nics={','.join(macs)} keytype={keytype} key={key} "
        f"hostkey={base64.b64encode(host_key.dropbear_file).decode()} hostpub={host_key.public_blob} "
        f"aslr={2 if aslr else 0} "
        f"seed={secrets.token_hex(32)} time={int(time.time())}\n"
    )


class ConsoleMarks:
    """What a guest said in the console marks, read one console line at a time
    (:meth:`feed`, by the thread that reads the console): the host key to pin and when
    the guest was ready. A ``NETLAB-HOSTKEY`` line counts only while the guest boots and
    only if the host did not choose the key itself (:meth:`pin_host_key`); ``NETLAB-ERROR``
    lines are logged as warnings on *log*, escaped. Safe to use from several threads."""

    ready_mark = READY_MARK  # what :attr:`ready` waits for, for messages

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.host_key: str | None = None  # the SSH host key to pin, fixed once ready
        self.ready_at = 0.0  # time.monotonic() when the ready mark came; 0: not yet
        self._host_key_fixed = False
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """Whether the guest printed :data:`READY_MARK`: its SSH server listens."""
        return self.ready_at > 0

    def feed(self, line: str) -> None:
        """Read one console *line* (without its newline)."""
        with self._lock:
            if line.startswith(HOSTKEY_MARK):
                self._printed_host_key(line[len(HOSTKEY_MARK):].strip())
            elif line.startswith(ERROR_MARK):
                self.log.warning("guest reported: %s", printable(line[len(ERROR_MARK):]))
            elif line.strip() == READY_MARK and not self.ready_at:
                self.ready_at = time.monotonic()
                self._host_key_fixed = True  # what the guest prints later is not its boot

    def _printed_host_key(self, key: str) -> None:
        if self._host_key_fixed:
            if key != self.host_key:
                self.log.warning("ignored a NETLAB-HOSTKEY line printed after boot: %s", printable(key[:80]))
        elif HOST_KEY_LINE.match(key):
            self.host_key = key
        else:
            self.log.warning("ignored a malformed NETLAB-HOSTKEY line: %s", printable(key[:80]))

    def pin_host_key(self, public_line: str) -> None:
        """Pin *public_line* (``ssh-ed25519 AAAA...``, a key the host made and gave the
        guest in its configuration line) as its SSH host key; no line changes it afterwards."""
        with self._lock:
            self.host_key = public_line
            self._host_key_fixed = True


@dataclass(frozen=True)
class ConsoleCommand:
    """One command for the console shell, with the text to type and how to read its
    framed output (see "The console shell" above)."""

    command: str
    token: str = field(default_factory=lambda: secrets.token_hex(6))

    @property
    def shell_ready(self) -> str:
        """The line that says the shell took :attr:`shell_setup`: echo and prompts off."""
        return f"NETLAB-SHELL-{self.token}"

    @property
    def shell_setup(self) -> str:
        """Typed (again, until :attr:`shell_ready` shows) before the first command: the
        shell starts after the ready mark, and what is typed before it opened the port is lost."""
        return f"stty -echo; PS1=''; PS2=''; printf '%s\\n' NETLAB-SHELL-{self.token}\n"

    @property
    def typed(self) -> str:
        """The command, framed; in a subshell: ``exit`` or ``cd`` in it must not touch the
        console's shell."""
        return (
            f"printf '%s\\n' NETLAB-BEGIN-{self.token}; ( {self.command}\n) < /dev/null 2>&1; "
            f"printf '\\nNETLAB-END-%s %d\\n' {self.token} $?\n"
        )

    @property
    def _end(self) -> str:
        return f"NETLAB-END-{self.token} "

    def finished(self, lines: Sequence[str]) -> bool:
        """Whether *lines* (the console's since the command was typed) hold its end."""
        return any(line.startswith(self._end) for line in lines)

    def result(self, lines: Sequence[str]) -> tuple[int, str]:
        """The exit status and output (stdout and stderr together) of the finished
        command in *lines*; the console's echo of the typed text, if any, is skipped."""
        done = next(line for line in reversed(lines) if line.startswith(self._end))
        begin = f"NETLAB-BEGIN-{self.token}"
        first = next((i + 1 for i, line in enumerate(lines) if line.endswith(begin)), 0)
        output = "".join(f"{line}\n" for line in lines[first:lines.index(done)])
        # the end mark starts on a new line of its own: drop that extra newline
        output = output[:-1] if output.endswith("\n") else output
        return int(done[len(self._end):].strip() or 255), output
