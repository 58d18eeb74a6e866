"""Host directories in guests (pytest_netlab.shares): every bad value is one line naming
it, raised before anything starts; QEMU itself refuses writes to a read-only share; a
guest without network (cold-booted, driven over its console) mounts its shares too."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pytest_netlab import ConfigError, LabError, give_to_qemu
from pytest_netlab.netns import namespace_exists
from pytest_netlab.privileges import qemu_identity
from pytest_netlab.qemu import FsShare
from pytest_netlab.shares import MAX_SHARES, Share, mount_script, share, shares_of


def _refused(value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        shares_of(value, "h1")
    assert "\n" not in str(info.value)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return tmp_path / "a", tmp_path / "b"


def test_both_forms_give_checked_shares(dirs):
    a, b = dirs
    assert shares_of({str(a): "/mnt/a", b: "/mnt/b"}, "h1") == (
        Share(a, "/mnt/a"), Share(b, "/mnt/b"),
    )
    assert shares_of([share(a, "/mnt/a"), share(b, "/opt/b", rw=True)], "h1") == (
        Share(a, "/mnt/a"), Share(b, "/opt/b", rw=True),
    )
    assert shares_of((), "h1") == ()


def test_bad_host_paths(dirs, tmp_path):
    a, _ = dirs
    (tmp_path / "file").write_text("")
    _refused({"a": "/mnt/a"}, r"^h1: share host path 'a' is relative: give an absolute path")
    _refused({str(tmp_path / "gone"): "/mnt/a"}, r"share host path '.*/gone' does not exist")
    _refused({str(tmp_path / "file"): "/mnt/a"}, r"share host path '.*/file' is not a directory")
    _refused({"": "/mnt/a"}, r"share host path '' is not accepted")
    (tmp_path / "link").symlink_to(a)
    _refused({a: "/mnt/a", tmp_path / "link": "/mnt/b"}, r"^h1: share host path '.*/a' is given twice")


@pytest.mark.parametrize(
    ("guest", "fragment"),
    [
        ("mnt/a", "give an absolute, normalised path"),
        ("/mnt/a/", "give an absolute, normalised path"),
        ("/mnt/../etc", "give an absolute, normalised path"),
        ("/mnt/a\nb", "give an absolute, normalised path"),
        (7, "give an absolute, normalised path"),
        ("/", "a directory the guest's own system needs"),
        ("/usr", "a directory the guest's own system needs"),
        ("/proc/x", "a directory the guest's own system needs"),
    ],
)
def test_bad_guest_paths(dirs, guest, fragment):
    _refused({dirs[0]: guest}, fragment)


def test_guest_paths_twice_or_nested(dirs):
    a, b = dirs
    _refused({a: "/mnt/x", b: "/mnt/x"}, r"^h1: share guest path '/mnt/x' is given twice")
    _refused({a: "/mnt/x", b: "/mnt/x/y"}, r"guest path '/mnt/x/y' is inside share '/mnt/x'")
    assert len(shares_of({a: "/mnt/x", b: "/mnt/xy"}, "h1")) == 2  # side by side is fine


def test_bad_forms(dirs):
    a, _ = dirs
    _refused([(str(a), "/mnt/a")], r"shares=.* of 'h1' is not accepted: give a dict")
    _refused(str(a), r"give a dict \{'/abs/host/dir': '/guest/dir'\} \(read-only\) or a list")
    with pytest.raises(ConfigError, match=r"share rw='yes' is not accepted: give True or False"):
        share(a, "/mnt/a", rw="yes")  # type: ignore[arg-type]


def test_too_many_shares(tmp_path):
    many = {}
    for i in range(MAX_SHARES + 1):
        (tmp_path / str(i)).mkdir()
        many[tmp_path / str(i)] = f"/mnt/{i}"
    _refused(many, rf"^h1: {MAX_SHARES + 1} shares: give at most {MAX_SHARES}$")


def test_rw_share_needs_user_xattrs(dirs, monkeypatch):
    def unsupported(*_: object) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "setxattr", unsupported)
    _refused(
        [Share(dirs[0], "/mnt/a", rw=True)],
        r"^h1: share host path .* takes no user extended attributes \(Operation not supported\)",
    )
    assert shares_of({dirs[0]: "/mnt/a"}, "h1")  # read-only: nothing is written, no xattr needed


def test_qemu_arguments_escape_commas_and_enforce_read_only():
    ro = FsShare(Path("/srv/a,b"), "netlab0").argv(0)
    assert ro == ["-fsdev", "local,id=share0,path=/srv/a,,b,security_model=mapped-xattr,readonly=on",
                  "-device", "virtio-9p-pci,fsdev=share0,mount_tag=netlab0"]
    assert "readonly" not in FsShare(Path("/srv/c"), "netlab1", readonly=False).argv(1)[1]


def test_mount_script_quotes_guest_paths(dirs):
    script = mount_script((Share(dirs[0], "/mnt/my dir"), Share(dirs[1], "/mnt/out", rw=True)))
    assert "mkdir -p '/mnt/my dir' && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro " \
        "netlab0 '/mnt/my dir'" in script
    assert script.endswith("msize=262144 netlab1 /mnt/out")


def test_lab_refuses_bad_shares_before_anything_starts(netlab, tmp_path):
    with pytest.raises(ConfigError, match=r"^h1: share host path 'rel/dir' is relative") as info:
        netlab.vm("h1", shares={"rel/dir": "/mnt/dir"})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"share guest path 'mnt' is not accepted"):
        netlab.share(tmp_path, "mnt")
    assert not netlab.vms
    assert not namespace_exists(netlab.name)


def test_read_only_is_enforced_by_qemu_and_console_guests_mount_too(netlab, tmp_path):
    source = tmp_path / "with, comma"  # ',' is escaped as ',,' for QEMU
    source.mkdir()
    (source / "hello.txt").write_text("from the host\n")
    out = tmp_path / "out"
    out.mkdir()
    give_to_qemu(out)
    resumed = netlab.vm(
        "h1", shares=[netlab.share(source, "/mnt/src"), netlab.share(out, "/mnt/out", rw=True)]
    )
    island = netlab.vm("island", network=False, shares={source: "/mnt/src"})  # cold boot, console
    netlab.start()

    assert resumed.ssh("cat /mnt/src/hello.txt").stdout == "from the host\n"
    # the guest may remount rw: QEMU (readonly=on) still refuses every write
    resumed.ssh("mount -o remount,rw /mnt/src")
    refused = resumed.ssh("echo x > /mnt/src/new; mkdir /mnt/src/d", check=False)
    assert refused.status != 0 and refused.stderr.count("Read-only file system") == 2
    assert sorted(os.listdir(source)) == ["hello.txt"]
    # mapped-xattr: the guest sees the owner and mode it set; on the host the file is
    # QEMU's user's, 0600, with the guest's view in user.virtfs.* attributes
    resumed.ssh("echo data > /mnt/out/f && chown 65534:65534 /mnt/out/f && chmod 4755 /mnt/out/f")
    assert resumed.ssh("stat -c '%u %g %a' /mnt/out/f").stdout == "65534 65534 4755\n"
    resumed.ssh("echo plain > /mnt/out/g")  # the session's umask is 022, as on a cold boot
    assert resumed.ssh("stat -c %a /mnt/out/g").stdout == "644\n"
    host = (out / "f").stat()
    qemu = qemu_identity()
    assert (host.st_uid, host.st_gid, host.st_mode & 0o7777) == (qemu.uid, qemu.gid, 0o600)
    assert "user.virtfs.mode" in os.listxattr(out / "f")
    assert island.console_run("cat /mnt/src/hello.txt").stdout == "from the host\n"


def test_guests_with_shares_run_the_generic_kernel(monkeypatch):
    from pytest_netlab.image import VARIANT_ENV, variant_for
    from pytest_netlab.shares import SHARE_MODULES

    monkeypatch.delenv(VARIANT_ENV, raising=False)
    assert variant_for(SHARE_MODULES) == "generic"  # Debian's cloud kernel has no 9p
    assert variant_for(()) == "cloud"


def test_a_mount_that_fails_is_a_lab_error_naming_the_guest(netlab, tmp_path, monkeypatch):
    import pytest_netlab.bringup

    monkeypatch.setattr(pytest_netlab.bringup, "mount_script", lambda _: "mount -t 9p nosuchtag /mnt")
    (tmp_path / "src").mkdir()  # tmp_path itself is 0700: QEMU's user may not read it
    netlab.vm("h1", shares={tmp_path / "src": "/mnt/src"})
    with pytest.raises(LabError, match=r"^h1: mounting its shares failed: .*mount -t 9p nosuchtag"):
        netlab.start()
