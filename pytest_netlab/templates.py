"""Booting guests from a saved state instead of a cold boot.

A *template* is the state of a default guest saved right after its boot, while its init
waits on the serial console for the settings of the guest it is to become. A clone is
a new QEMU with the same devices started with ``-incoming`` from that state; the host
then types one ``NETLAB-CONFIG`` line on its console (name, MACs, SSH key, a fresh
random seed, the time) and the guest applies it, makes its own host key and starts its
SSH server. That skips the kernel boot: a clone answers SSH in well under a second
where a cold boot takes seconds under TCG.

The state fits only a QEMU with the same devices, so a template is kept per device
layout (memory, CPUs, NIC models and queues) in the cache, made once per machine under
a file lock, and rebuilt when the image, QEMU or the layout changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .constants import NAMESPACE_PREFIX, Accelerator
from .errors import LabError
from .guest_protocol import TEMPLATE_MARK, guest_cmdline
from .image import PRUNE_AFTER_DAYS, GuestImage
from .locks import unless_locked
from .netns import LabNamespace
from .owner import Owner
from .qemu import FsShare, MachineConfig, NicConfig, QemuMachine
from .shares import share_tag
from .trust import create_new_file

log = logging.getLogger(__name__)

TEMPLATE_FORMAT = 2  # 2: the management netdev has ipv6=off (a state of 1 has RA routes)


@dataclass(frozen=True)
class NicLayout:
    model: str
    queues: int = 1
    vectors: int | None = None


@dataclass(frozen=True)
class Layout:
    """What a saved state must match: the guest's devices and size."""

    memory: int
    cpus: int
    accel: Accelerator
    nics: tuple[NicLayout, ...]
    numa: bool = False
    shares: int = 0  # virtio-9p devices; the template's point at an empty directory

    def template_macs(self) -> list[str]:
        return [f"52:54:00:fe:00:{i:02x}" for i in range(len(self.nics))]


class TemplateStore:
    """Saved guest states in ``root``, one per :class:`Layout`."""

    def __init__(self, root: Path, qemu_version: str) -> None:
        self.root = root
        self.qemu_version = qemu_version

    def _digest(self, layout: Layout, image: GuestImage) -> str:
        ident = {
            "format": TEMPLATE_FORMAT,
            "qemu": self.qemu_version,
            "kernel": _file_id(image.kernel),
            "initrd": _file_id(image.initrd),
            "cmdline": image.cmdline,
            "disk": _file_id(image.disk) if image.disk is not None else None,
            "layout": [layout.memory, layout.cpus, layout.accel,
                       [[n.model, n.queues, n.vectors] for n in layout.nics], layout.numa,
                       layout.shares],
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    def machine_config(self, layout: Layout, image: GuestImage, name: str) -> MachineConfig:
        """A config with the template's devices and kernel command line (NIC fds to fill).

        Its shares are read-only views of an empty directory: a clone gives each device
        its own host directory (a path is no part of the saved state) and mounts it after
        the resume. The template never mounts them, and QEMU refuses to save a guest
        only while a 9p share is mounted.
        """
        macs = layout.template_macs()
        empty = self.root / "empty-share"
        if layout.shares:
            empty.mkdir(parents=True, exist_ok=True)
        return MachineConfig(
            name=name, kernel=image.kernel, initrd=image.initrd,
            cmdline=guest_cmdline(
                image, "template", macs, [n.model for n in layout.nics], cpus=layout.cpus
            )
            + " netlab.template=1",
            memory_mib=layout.memory, cpus=layout.cpus, accel=layout.accel,
            nics=[NicConfig(mac=mac, model=n.model, vectors=n.vectors)
                  for mac, n in zip(macs, layout.nics, strict=True)],
            numa=layout.numa, drives=image.drives(),
            shares=[FsShare(empty, share_tag(i)) for i in range(layout.shares)],
        )

    def state(self, layout: Layout, image: GuestImage, boot_timeout: float) -> Path:
        """The saved state for *layout*, made now if there is none.

        Raises:
            LabError: the template guest would not boot or its state not be saved.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{self._digest(layout, image)}.state"
        if _touch(path):
            return path
        with FileLock(str(path) + ".lock"):
            if _touch(path):
                return path
            started = time.monotonic()
            self._make(layout, image, path, boot_timeout)
            log.info("saved a template guest for %s in %.1f s: %s", layout, time.monotonic() - started, path)
        # the store grows here: states of older images, QEMU versions or layouts go
        for old in self.prune():
            log.info("removed a template guest state unused for %d days: %s", PRUNE_AFTER_DAYS, old)
        return path

    def prune(self, older_than_days: float = PRUNE_AFTER_DAYS) -> list[Path]:
        """Remove the saved states no guest was resumed from for *older_than_days* (a
        state's modification time is its last use); a state being made is kept."""
        too_old = time.time() - older_than_days * 86400
        removed = []
        for state in self.root.glob("*.state"):
            try:
                if state.stat().st_mtime >= too_old:
                    continue
            except FileNotFoundError:
                continue
            with unless_locked(FileLock(str(state) + ".lock")) as held:
                if held:
                    state.unlink(missing_ok=True)
                    removed.append(state)
        return removed

    def _make(self, layout: Layout, image: GuestImage, path: Path, boot_timeout: float) -> None:
        owner = Owner.me().tag  # the names cleanup knows the owner by (see .cleanup)
        workdir = self.root / f"build-{owner}"
        namespace = LabNamespace(f"{NAMESPACE_PREFIX}{os.getpid()}-tpl{secrets.token_hex(3)}")
        config = self.machine_config(layout, image, "template")
        machine: QemuMachine | None = None
        partial = path.with_suffix(f".{owner}.part")
        made_workdir = False
        try:
            workdir.mkdir(mode=0o700)  # new, not whatever is there: nothing is written through a link
            made_workdir = True
            create_new_file(partial)
            namespace.create()
            namespace.add_bridge("tplbr")
            for i, (nic, spec) in enumerate(zip(config.nics, layout.nics, strict=True)):
                nic.fds = namespace.add_tap(f"tpl{i}", "tplbr", spec.queues)
            machine = QemuMachine(config, workdir)
            machine.launch()
            machine.wait_console(TEMPLATE_MARK, boot_timeout)
            machine.save_state(partial)
            partial.rename(path)
        except LabError as exc:
            raise LabError(f"cannot make a template guest for {layout}: {exc}") from exc
        finally:
            if machine is not None:
                machine.shutdown()
            namespace.close()
            partial.unlink(missing_ok=True)
            if made_workdir:
                for leftover in workdir.glob("*"):
                    leftover.unlink()
                workdir.rmdir()

    def clean(self) -> list[Path]:
        removed = []
        for state in self.root.glob("*.state"):
            state.unlink()
            removed.append(state)
        return removed


def _touch(path: Path) -> bool:
    """Mark the saved state *path* as used now; ``False`` if there is none."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _file_id(path: Path) -> list[object]:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]
