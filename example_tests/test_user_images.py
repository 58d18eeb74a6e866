"""Document 000's Yocto-style boot: `-kernel bzImage -drive file=rootfs.ext4,if=virtio,format=raw
-append "root=/dev/vda rw"`, plus a qcow2 disk (`-drive file=disk1.qcow2,if=virtio`). The test
makes both images itself from the default guest image's files, boots them, and checks that
the guest's writes never reach the image files (the lab attaches disks with snapshot=on).

One difference from a Yocto kernel: the default kernel has virtio_blk as a module, so the
default initramfs is given too; it loads the driver, mounts root= and hands over to the
disk's own /init."""

from __future__ import annotations

import hashlib
import subprocess


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# device nodes are left out: an ordinary user may not make them, and the guest's /dev is
# a devtmpfs that the image's init moves onto the disk root
NO_DEVICES = ["--nonmatching", "dev/console", "usr/lib/netlab/dev/*"]


def _unpack_initrd(initrd, tree):
    """The default initrd is two cpio archives: the extra tier, then the lz4-packed core."""
    tree.mkdir()
    with open(initrd, "rb") as archive:
        subprocess.run(["cpio", "-idm", "--quiet", *NO_DEVICES], stdin=archive, cwd=tree, check=True)
        subprocess.run(f"lz4 -dc | cpio -idm --quiet {' '.join(NO_DEVICES)}", shell=True,
                       stdin=archive, cwd=tree, check=True)


def test_boot_from_an_ext4_root_with_a_qcow2_disk(netlab, tmp_path):
    tree = tmp_path / "rootfs"
    _unpack_initrd(netlab.default_image.initrd, tree)
    (tree / "etc" / "motd").write_text("made by the test\n")
    rootfs = tmp_path / "rootfs.ext4"
    # root's files in the guest: run as an ordinary user, mkfs sees them as root's in a user
    # namespace of its own that maps that user to root (unshare -r)
    subprocess.run(["unshare", "--map-root-user", "mkfs.ext4", "-q", "-F", "-L", "netlab-root",
                    "-d", tree, rootfs, "64M"], check=True)

    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hello from disk1\n")
    raw = tmp_path / "disk1.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", data, raw, "8M"], check=True)
    disk1 = tmp_path / "disk1.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, disk1], check=True)
    before = {path: _digest(path) for path in (rootfs, disk1)}

    vm = netlab.vm("h1", kernel=netlab.default_image.kernel, initrd=netlab.default_image.initrd,
                   rootfs=rootfs, disks=[disk1])
    netlab.start()

    root = vm.ssh("grep ' / ' /proc/mounts").stdout.split()
    assert root[:3] == ["/dev/vda", "/", "ext4"] and root[3].startswith("rw")
    assert "root=/dev/vda rw" in vm.ssh("cat /proc/cmdline").stdout
    assert vm.ssh("cat /etc/motd").stdout == "made by the test\n"
    vm.ssh("echo written > /written-by-the-guest && sync")

    vm.ssh("mkdir -p /mnt/disk1 && mount /dev/vdb /mnt/disk1")
    assert vm.ssh("cat /mnt/disk1/hello.txt").stdout == "hello from disk1\n"
    vm.ssh("echo changed > /mnt/disk1/hello.txt && sync && umount /mnt/disk1")

    netlab.close()
    assert {path: _digest(path) for path in (rootfs, disk1)} == before
