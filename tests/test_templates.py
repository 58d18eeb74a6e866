"""Templates whose RAM is a file clones map copy-on-write, and the state-file fallback."""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import stat
from dataclasses import replace
from pathlib import Path

from pytest_netlab.privileges import QemuIdentity, let_qemu_write, qemu_identity
from pytest_netlab.qemu import MemoryFile, qemu_version
from pytest_netlab.templates import REFUSAL_FILE, Layout, Template, TemplateStore


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mapped_files(pid: int | None) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split()) == 6}


def test_clones_map_the_template_ram_copy_on_write_and_stay_independent(netlab):
    br1 = netlab.bridge("br1")
    h1, h2 = netlab.vm("h1", nics=[br1]), netlab.vm("h2", nics=[br1])
    netlab.start()
    ram = h1.machine.config.memory_file.path
    assert ram == h2.machine.config.memory_file.path and ram.suffix == ".ram"
    assert not h1.machine.config.memory_file.shared
    assert str(ram) in _mapped_files(h1.machine.pid) & _mapped_files(h2.machine.pid)
    before = _sha256(ram)

    # each guest writes 32 MiB of its RAM (in its tmpfs) with its own data
    sums = {}
    for vm in (h1, h2):
        vm.ssh(f"dd if=/dev/urandom of=/tmp/{vm.name}.bin bs=1M count=32 && "
               f"echo {vm.name} > /tmp/who")
        sums[vm.name] = vm.ssh(f"md5sum < /tmp/{vm.name}.bin").stdout.split()[0]
    assert sums["h1"] != sums["h2"]
    for vm in (h1, h2):
        assert vm.ssh("cat /tmp/who").stdout == f"{vm.name}\n"
        assert vm.ssh(f"md5sum < /tmp/{vm.name}.bin").stdout.split()[0] == sums[vm.name]
        assert vm.ssh("ls /tmp/*.bin").stdout == f"/tmp/{vm.name}.bin\n"
    assert _sha256(ram) == before  # no clone wrote to the template's file


def test_a_refused_ram_file_is_recorded_and_templates_fall_back_to_state_files(
    netlab, tmp_path, monkeypatch, caplog
):
    store = TemplateStore(tmp_path / "templates", qemu_version())
    netlab.settings = replace(netlab.settings, templates=store)
    real_argv = MemoryFile.argv

    def refused(self: MemoryFile, size_mib: int, path: str | None = None) -> list[str]:
        # a RAM file QEMU cannot open: the template's QEMU exits when it makes its
        # memory (in its sandbox already), as where the mapping itself is refused
        return real_argv(self, size_mib, "/nonexistent-netlab/ram" if self.shared else path)

    monkeypatch.setattr(MemoryFile, "argv", refused)
    vm = netlab.vm("h1")
    with caplog.at_level(logging.WARNING, logger="pytest_netlab.templates"):
        netlab.start()

    assert vm.ssh("echo up").stdout == "up\n"
    assert vm.machine.config.memory_file is None  # resumed from a whole state file
    assert vm.machine.config.incoming is not None and vm.machine.config.incoming.stat().st_size > 10_000_000
    assert "refused a template guest's RAM in a file" in caplog.text
    assert "/nonexistent-netlab/ram" in (store.memory_file_refusal() or "")
    assert store.memory_method(Layout(128, 1, "tcg", ())) == "state"
    assert not list(store.root.glob("*.ram*"))


def test_a_refusal_recorded_by_another_qemu_version_is_not_evidence(tmp_path):
    store = TemplateStore(tmp_path, "QEMU 7.2")
    layout = Layout(128, 1, "tcg", ())
    assert store.memory_method(layout) == "file"
    assert store.memory_method(replace(layout, numa=True)) == "state"  # its own backend
    (tmp_path / REFUSAL_FILE).write_text(json.dumps({"qemu": "QEMU 7.1", "reason": "old"}))
    assert store.memory_file_refusal() is None and store.memory_method(layout) == "file"
    (tmp_path / REFUSAL_FILE).write_text(json.dumps({"qemu": "QEMU 7.2", "reason": "saving: x"}))
    assert store.memory_file_refusal() == "saving: x" and store.memory_method(layout) == "state"
    # the two methods' templates have names of their own
    image = _FakeImage(tmp_path)
    assert store._digest(layout, image, "file") != store._digest(layout, image, "state")


def test_a_numa_guest_resumes_from_a_whole_state_file(netlab):
    vm = netlab.vm("h1", numa=True)
    netlab.start()

    assert vm.machine.config.incoming is not None  # resumed, not booted
    assert vm.machine.config.memory_file is None
    assert vm.ssh("ls /sys/devices/system/node/ | grep -c '^node'").stdout == "1\n"


class _FakeImage:
    """What a template's name is made of, without an image."""

    def __init__(self, root: Path) -> None:
        self.kernel = self.initrd = root / "vmlinuz"
        self.kernel.write_bytes(b"")
        self.cmdline = "console=ttyS0"
        self.disk = None  # the default image: no package disk



def test_prune_and_clean_remove_a_template_with_its_ram_file(tmp_path):
    store = TemplateStore(tmp_path, "QEMU 7.2")
    for name in ("old", "new"):
        (tmp_path / f"{name}.state").write_bytes(b"QEVM")
        (tmp_path / f"{name}.ram").write_bytes(bytes(4096))
        (tmp_path / f"{name}.stamp").write_text("{}")
    os.utime(tmp_path / "old.state", (0, 0))  # no guest resumed from it since 1970
    assert store.prune() == [tmp_path / "old.state"]
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert left == ["new.ram", "new.stamp", "new.state"]
    (tmp_path / REFUSAL_FILE).write_text("{}")
    assert len(store.clean()) == 4
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]


def _after_a_clock_tick(file: Path) -> None:
    """Wait until the clock file times are taken from (a coarse one) has passed the
    change time of *file*: a write in the same tick would leave the times as they are."""
    probe = file.with_name("clock-probe")
    probe.touch()
    while probe.stat().st_ctime_ns <= file.stat().st_ctime_ns:
        os.utime(probe)  # the times of the file system's clock, now
    probe.unlink()


def test_a_template_ram_file_is_roots_and_qemus_to_write_and_any_write_is_seen(tmp_path):
    state, ram = tmp_path / "t.state", tmp_path / "t.ram"
    state.write_bytes(b"QEVM")
    ram.write_bytes(bytes(1 << 16))
    identity = qemu_identity()
    let_qemu_write(ram, identity)
    template = Template(state, ram)
    template.seal("test")
    info = ram.stat()
    # root's, QEMU's group may write; a rootless run's QEMU is the user, who owns it
    wanted = (0, 0o660) if os.geteuid() == 0 else (os.geteuid(), 0o600)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == wanted and info.st_gid == identity.gid
    assert template.problem(identity) is None

    # a write through a shared mapping: the kernel sets the times at the first write
    _after_a_clock_tick(ram)
    with open(ram, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:
        mapped[4096] = 1
    assert "changed after it was made" in (template.problem(identity) or "")

    template.seal("test")  # a write() too
    _after_a_clock_tick(ram)
    with open(ram, "r+b") as f:
        f.write(b"\0")
    assert "changed after it was made" in (template.problem(identity) or "")

    template.seal("test")  # another QEMU user: it may not open the file
    stranger = QemuIdentity(identity.uid + 1, identity.gid + 1, None, "a test")
    assert "may not read and write" in (template.problem(stranger) or "")
    ram.with_suffix(".stamp").unlink()
    assert "no RAM file or stamp" in (template.problem(identity) or "")


def test_a_template_whose_ram_file_was_written_is_made_again_in_a_new_file(netlab, tmp_path, caplog):
    store = TemplateStore(tmp_path / "templates", qemu_version())
    layout = Layout(128, 1, netlab.settings.accel, ())
    first = store.template(layout, netlab.default_image, netlab.settings.boot_timeout)
    assert first.memory is not None
    inode = first.memory.stat().st_ino
    _after_a_clock_tick(first.memory)
    with open(first.memory, "r+b") as f:  # as a QEMU of QEMU's user could
        f.write(b"\xcc")

    with caplog.at_level(logging.WARNING, logger="pytest_netlab.templates"):
        again = store.template(layout, netlab.default_image, netlab.settings.boot_timeout)

    assert again == first and again.problem(qemu_identity()) is None
    assert again.memory is not None and again.memory.stat().st_ino != inode
    assert "changed after it was made" in caplog.text
