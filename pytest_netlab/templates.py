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

A template's RAM lives in a file of its own (``<digest>.ram``, QEMU's
``memory-backend-file,share=on``) and its state file holds only the devices
(``x-ignore-shared``): every clone maps that file copy-on-write (``share=off``), so the
pages a clone never writes are one copy in the page cache for all clones, and a resume
reads a few hundred kilobytes instead of the whole RAM. QEMU opens the file read-write
but maps it private, so no clone ever writes to it (QEMU 7.2's ``readonly=on`` would
make the guest's RAM read-only too). QEMU's user may therefore write it (it is root's,
QEMU's group, mode 0660): the file's inode, size and times are recorded when the
template is made (``<digest>.stamp``), and a template whose file differs is made again
before any clone maps it (docs/security.md, "QEMU's privileges"). Where QEMU refuses a
RAM file (the first template made with one does not save or does not load), the refusal
is recorded in the store and templates keep their RAM in the state file, as NUMA guests'
templates always do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock

from .constants import NAMESPACE_PREFIX, Accelerator
from .errors import BootTimeout, LabError, QemuError
from .guest_protocol import TEMPLATE_MARK, guest_cmdline
from .image import PRUNE_AFTER_DAYS, GuestImage
from .locks import unless_locked
from .netns import LabNamespace
from .owner import Owner
from .privileges import QemuIdentity, let_qemu_write, qemu_identity
from .qemu import FsShare, MachineConfig, MemoryFile, NicConfig, QemuMachine
from .shares import share_tag
from .trust import create_new_file

log = logging.getLogger(__name__)

TEMPLATE_FORMAT = 2  # 2: the management netdev has ipv6=off (a state of 1 has RA routes)
REFUSAL_FILE = "memory-file-refused.json"
_MAKING = threading.Lock()  # making, recording a refusal, pruning: one thread at a time

# where a template keeps the guest's RAM: a file clones map copy-on-write, or the state
MemoryMethod = Literal["file", "state"]


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


@dataclass(frozen=True)
class Template:
    """A saved template guest: its state file and, for the ``file`` method, its RAM and
    the stamp of that RAM file (``<digest>.stamp``: see :meth:`problem`)."""

    state: Path
    memory: Path | None = None

    @property
    def stamp(self) -> Path:
        return self.state.with_suffix(".stamp")

    def clone_memory(self) -> MemoryFile | None:
        """The RAM of a clone: the template's file mapped copy-on-write."""
        return MemoryFile(self.memory, shared=False) if self.memory is not None else None

    def seal(self, owner: str) -> None:
        """Record the stamp of the RAM file as it is now, the template whole."""
        assert self.memory is not None
        partial = self.stamp.with_suffix(f".stamp.{owner}.part")
        partial.write_text(json.dumps(_stamp_of(self.memory)) + "\n")
        partial.rename(self.stamp)

    def problem(self, identity: QemuIdentity) -> str | None:
        """Why clones of QEMU's user *identity* cannot use this template; ``None`` if
        they can. That user may write the RAM file (QEMU opens it read-write), so a
        write to it, by ``write()`` or through a shared mapping, is seen in its change
        time: a RAM file whose size, inode or times differ from its stamp is refused."""
        if not self.state.exists():
            return "no state file"
        if self.memory is None:
            return None
        try:
            stamp = json.loads(self.stamp.read_text())
            now = _stamp_of(self.memory)
        except (OSError, ValueError) as exc:
            return f"no RAM file or stamp ({exc})"
        if now != stamp:
            return f"its RAM file changed after it was made (was {stamp}, is {now})"
        if not identity.may(self.memory, os.R_OK | os.W_OK):
            return f"QEMU's user {identity.describe()} may not read and write its RAM file"
        return None



class _MemoryFileRefused(LabError):
    """QEMU would not save or resume a template whose RAM is a file."""


class TemplateStore:
    """Saved template guests in ``root``, one per :class:`Layout` (see the module)."""

    def __init__(self, root: Path, qemu_version: str, *, memory_files: bool = True) -> None:
        self.root = root
        self.qemu_version = qemu_version
        self.memory_files = memory_files  # False: RAM in the state files (to compare)

    def memory_method(self, layout: Layout) -> MemoryMethod:
        """``file`` (RAM in a file clones map copy-on-write), or ``state`` for NUMA
        guests (their RAM is a memory backend of its own), once this QEMU refused a
        RAM file (see :meth:`memory_file_refusal`) or when the store was made without
        ``memory_files``."""
        if not self.memory_files or layout.numa or self.memory_file_refusal() is not None:
            return "state"
        return "file"

    def memory_file_refusal(self) -> str | None:
        """Why this QEMU refused a template's RAM file, as recorded; ``None`` if it did not."""
        try:
            record = json.loads((self.root / REFUSAL_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return str(record.get("reason")) if record.get("qemu") == self.qemu_version else None

    def _record_refusal(self, reason: str) -> None:
        partial = self.root / f"{REFUSAL_FILE}.{Owner.me().tag}.part"
        partial.write_text(json.dumps({"qemu": self.qemu_version, "reason": reason}) + "\n")
        partial.rename(self.root / REFUSAL_FILE)

    def _digest(self, layout: Layout, image: GuestImage, method: MemoryMethod | None = None) -> str:
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
        if (method or self.memory_method(layout)) == "file":
            ident["memory"] = "file"  # states of the other method keep their names
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    def _paths(self, layout: Layout, image: GuestImage, method: MemoryMethod) -> Template:
        base = self.root / self._digest(layout, image, method)
        return Template(base.with_suffix(".state"), base.with_suffix(".ram") if method == "file" else None)

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

    def template(self, layout: Layout, image: GuestImage, boot_timeout: float) -> Template:
        """The template for *layout*, made now if there is none.

        Raises:
            LabError: the template guest would not boot or its state not be saved.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        method = self.memory_method(layout)
        template = self._paths(layout, image, method)
        identity = qemu_identity()
        if template.problem(identity) is None and _touch(template):
            return template
        # threads of this process (guests brought up at once) make templates one at a
        # time: their build directory and partial files are named by the process
        with _MAKING, FileLock(str(template.state) + ".lock"):
            problem = template.problem(identity)
            if problem is None and _touch(template):
                return template
            if template.state.exists():
                log.warning("template guest %s is made again: %s", template.state, problem)
                template.state.unlink()  # guests started from now on wait for the new one
            started = time.monotonic()
            try:
                self._make(layout, image, template, boot_timeout)
            except _MemoryFileRefused as exc:
                self._record_refusal(str(exc))
                log.warning("QEMU refused a template guest's RAM in a file (%s): templates "
                            "keep their RAM in their state files from now on", exc)
            else:
                log.info("saved a template guest for %s (RAM in %s) in %.1f s: %s", layout,
                         "a file clones map copy-on-write" if method == "file" else "the state",
                         time.monotonic() - started, template.state)
        if not template.state.exists():  # refused: memory_method() says "state" now
            return self.template(layout, image, boot_timeout)
        # the store grows here: states of older images, QEMU versions or layouts go
        with _MAKING:
            for old in self.prune():
                log.info("removed a template guest state unused for %d days: %s", PRUNE_AFTER_DAYS, old)
        return template

    def prune(self, older_than_days: float = PRUNE_AFTER_DAYS) -> list[Path]:
        """Remove the templates no guest was resumed from for *older_than_days* (a
        state's modification time is its last use); a template being made is kept."""
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
                    state.with_suffix(".ram").unlink(missing_ok=True)
                    state.with_suffix(".stamp").unlink(missing_ok=True)
                    removed.append(state)
        return removed

    def _make(self, layout: Layout, image: GuestImage, template: Template, boot_timeout: float) -> None:
        """Boot a template guest and save it as *template* (its files appear whole or
        not at all).

        Raises:
            _MemoryFileRefused: with a RAM file, QEMU exited, or would not save or resume.
            LabError: the template guest would not boot or its state not be saved.
        """
        owner = Owner.me().tag  # the names cleanup knows the owner by (see .cleanup)
        workdir = self.root / f"build-{owner}"
        namespace = LabNamespace(f"{NAMESPACE_PREFIX}{os.getpid()}-tpl{secrets.token_hex(3)}")
        suffix = f".{owner}.part"
        partial = Template(template.state.with_suffix(suffix),
                           template.memory.with_suffix(".ram" + suffix) if template.memory else None)
        config = self.machine_config(layout, image, "template")
        config.memory_file = MemoryFile(partial.memory, shared=True) if partial.memory else None
        machine: QemuMachine | None = None
        made_workdir = False
        try:
            workdir.mkdir(mode=0o700)  # new, not whatever is there: nothing is written through a link
            made_workdir = True
            create_new_file(partial.state)
            if partial.memory is not None:
                create_new_file(partial.memory)
                let_qemu_write(partial.memory, qemu_identity())  # the template's QEMU and clones
            namespace.create()
            namespace.add_bridge("tplbr")
            for i, (nic, spec) in enumerate(zip(config.nics, layout.nics, strict=True)):
                nic.fds = namespace.add_tap(f"tpl{i}", "tplbr", spec.queues)
            machine = QemuMachine(config, workdir)
            try:
                machine.launch()
                machine.wait_console(TEMPLATE_MARK, boot_timeout)
                machine.save_state(partial.state)
            except QemuError as exc:
                refusal = _refusal("saving a template", exc, machine)
                if refusal is None:
                    raise
                raise refusal from exc
            machine.shutdown()
            if partial.memory is not None and template.memory is not None:
                self._resume_once(layout, image, partial, namespace, workdir)
                partial.memory.rename(template.memory)
                template.seal(owner)  # after the rename, which changes its change time
            partial.state.rename(template.state)
        except _MemoryFileRefused:
            raise
        except LabError as exc:
            raise LabError(f"cannot make a template guest for {layout}: {exc}") from exc
        finally:
            if machine is not None:
                machine.shutdown()
            namespace.close()
            _remove_build(partial, workdir if made_workdir else None)

    def _resume_once(self, layout: Layout, image: GuestImage, template: Template,
                     namespace: LabNamespace, workdir: Path) -> None:
        """Resume one clone from the new *template* (its files in *workdir*): the
        evidence that QEMU, as its user, maps the RAM file copy-on-write and loads a
        state saved without the RAM.

        Raises:
            _MemoryFileRefused: it did not.
            LabError: its TAPs could not be made.
        """
        config = self.machine_config(layout, image, "trial")
        config.incoming = template.state
        config.memory_file = template.clone_memory()
        for i, (nic, spec) in enumerate(zip(config.nics, layout.nics, strict=True)):
            nic.fds = namespace.add_tap(f"try{i}", "tplbr", spec.queues)
        clone = QemuMachine(config, workdir)
        try:
            clone.launch()
            clone.finish_incoming()
        except QemuError as exc:
            refusal = _refusal("resuming a clone", exc, clone)
            if refusal is None:
                raise
            raise refusal from exc
        finally:
            clone.shutdown()

    def clean(self) -> list[Path]:
        removed = []
        for path in [*self.root.glob("*.state"), *self.root.glob("*.ram"), *self.root.glob("*.stamp"),
                     self.root / REFUSAL_FILE]:
            if path.exists():
                path.unlink()
                removed.append(path)
        return removed


def _remove_build(partial: Template, workdir: Path | None) -> None:
    """Remove what making a template left: its partial files, and *workdir* if given."""
    partial.state.unlink(missing_ok=True)
    if partial.memory is not None:
        partial.memory.unlink(missing_ok=True)
    if workdir is not None:
        for leftover in workdir.glob("*"):
            leftover.unlink()
        workdir.rmdir()


def _refusal(what: str, exc: QemuError, machine: QemuMachine) -> _MemoryFileRefused | None:
    """With a RAM file, QEMU failing (not a slow boot) is its refusal: what it said."""
    if machine.config.memory_file is None or isinstance(exc, BootTimeout):
        return None
    with contextlib.suppress(OSError):
        said = machine.qemu_log.read_text(errors="replace").strip().splitlines()
        if said:
            return _MemoryFileRefused(f"{what}: {said[-1]}")
    return _MemoryFileRefused(f"{what}: {str(exc).splitlines()[0]}")


def _touch(template: Template) -> bool:
    """Mark *template* as used now; ``False`` if its state is gone."""
    try:
        os.utime(template.state)
    except FileNotFoundError:
        return False
    return True


def _stamp_of(path: Path) -> dict[str, int]:
    """What any change to the file *path* changes: its change time at the least."""
    info = path.stat()
    return {"inode": info.st_ino, "size": info.st_size, "mtime_ns": info.st_mtime_ns,
            "ctime_ns": info.st_ctime_ns}


def _file_id(path: Path) -> list[object]:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]
