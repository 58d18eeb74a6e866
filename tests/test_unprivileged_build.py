"""Guest images built by an ordinary user: the default image the same bytes as root's, a
package image through mmdebstrap's unshare mode with root-owned files, and the one-line
refusal (with the fix) where the user lacks what unshare mode needs.

The real builds run as a throwaway user (``useradd -m nltest-img-...``, removed with
``userdel -r``), so they need root to run and skip without it; the recipe runs as that
user from a copy of ``images/`` (a checkout under /root is not readable by others).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_netlab import image, subids
from pytest_netlab import package_image as pi
from pytest_netlab.errors import ImageError
from pytest_netlab.image import GuestImage

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None,
    reason="making a throwaway user to build as needs root (and useradd, runuser)",
)
SAME_FILES = (
    "initrd.img", "vmlinux", "vmlinuz", "cmdline", "kernel-version", "modules.builtin", "manifest.txt",
)


# -- what unshare mode needs (fakes: the checks' logic) -----------------------------------


def _as_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, subuid: str, subgid: str) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(subids, "current_user", lambda: "alice")
    (tmp_path / "subuid").write_text(subuid)
    (tmp_path / "subgid").write_text(subgid)
    monkeypatch.setattr(subids, "SUBUID", tmp_path / "subuid")
    monkeypatch.setattr(subids, "SUBGID", tmp_path / "subgid")
    monkeypatch.setattr(subids, "_probe", lambda: None)


def test_root_needs_nothing_for_a_package_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert subids.unshare_missing() is None
    assert subids.describe() == "as root: mmdebstrap's root mode"


def test_subordinate_ids_are_found_by_user_name_or_uid(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("bob:100000:65536\nalice:165536:1000\n4242:300000:65536\nbad line\n")
    assert subids.ranges(path, "alice", 4242) == [(165536, 1000), (300000, 65536)]
    assert subids.ranges(tmp_path / "missing", "alice", 4242) == []


def test_a_user_without_newuidmap_is_told_to_install_uidmap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _as_user(monkeypatch, tmp_path, "alice:100000:65536\n", "alice:100000:65536\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # neither newuidmap nor newgidmap there
    missing = subids.unshare_missing()
    assert missing is not None
    assert missing.message() == "newuidmap and newgidmap not found: apt-get install uidmap (as root)"


def test_a_user_without_subordinate_ids_is_given_a_free_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _as_user(monkeypatch, tmp_path, "bob:100000:65536\nalice:200000:100\n", "bob:100000:70000\n")
    for tool in ("newuidmap", "newgidmap"):
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = subids.unshare_missing()
    assert missing is not None
    files = f"{tmp_path / 'subuid'} and {tmp_path / 'subgid'}"
    assert missing.why == f"alice has fewer than 65536 subordinate ids in {files}"
    # above every range of both files, so no other user's ids
    assert missing.fix == "usermod --add-subuids 200100-265635 --add-subgids 200100-265635 alice (as root)"


def test_disabled_user_namespaces_are_named_with_their_sysctl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _as_user(monkeypatch, tmp_path, "alice:100000:65536\n", "alice:100000:65536\n")
    for tool in ("newuidmap", "newgidmap"):
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    (tmp_path / "clone").write_text("0\n")
    monkeypatch.setattr(
        subids, "_SYSCTLS", (("kernel.unprivileged_userns_clone", tmp_path / "clone", "0", "1"),)
    )
    missing = subids.unshare_missing()
    assert missing is not None
    assert missing.message() == (
        "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0): "
        "sysctl -w kernel.unprivileged_userns_clone=1 (as root), or build as root"
    )


def test_a_package_build_the_user_cannot_run_is_refused_before_anything_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(pi, "resolve", lambda names: ["iperf3=3.12"])
    monkeypatch.setattr(pi, "current_user", lambda: "alice")
    missing = subids.Missing("newuidmap not found", "apt-get install uidmap")
    monkeypatch.setattr(pi, "unshare_missing", lambda: missing)

    def build(*args: object) -> None:
        raise AssertionError("the build ran")

    monkeypatch.setattr(pi, "_build", build)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"k")
    base = GuestImage(
        kernel=kernel, initrd=kernel, cmdline="console=ttyS0", root=tmp_path, variant="cloud",
        hash="h", kernel_version="6.1", modules=frozenset(),
    )
    with pytest.raises(ImageError) as error:
        pi.package_image(["iperf3"], base=base)
    assert str(error.value) == (
        "cannot build the package image (iperf3) as alice (not root, so with mmdebstrap's unshare "
        "mode): newuidmap not found: apt-get install uidmap"
    )
    assert not list((tmp_path / "cache" / "images").glob("*pkg-*"))


def test_a_package_build_checks_the_cached_kernel_package_against_apt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path / "cache"))
    debs = tmp_path / "cache" / "debs"
    debs.mkdir(parents=True)
    planted = debs / "linux-image-9.9.9-cloud-amd64_9.9.9-1_amd64.deb"  # apt knows no such package
    planted.write_bytes(b"a kernel nobody vouches for")
    ran: list[list[str]] = []
    monkeypatch.setattr(
        pi, "run_recipe", lambda command, *args: (ran.append(command), (1, ["error: stop"]))[1]
    )
    (tmp_path / "cache" / "images").mkdir()
    base = GuestImage(
        kernel=planted, initrd=planted, cmdline="", root=tmp_path, variant="cloud", hash="h",
        kernel_version="9.9.9", modules=frozenset(),
    )
    with pytest.raises(ImageError, match="error: stop"):
        pi._build(("iperf3",), base, "abc", tmp_path / "cache" / "images" / "pkg-abc", None)
    assert ran and not planted.exists()


def test_a_cache_the_user_cannot_write_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(image, "current_user", lambda: "alice")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for another user's cache
    with pytest.raises(ImageError) as error:
        image.writable_images_dir()
    assert str(error.value) == (
        f"cannot build a guest image: {tmp_path / 'cache' / 'images'} is not writable by alice: set "
        "NETLAB_CACHE_DIR to a directory of yours (the default is ~/.cache/pytest-netlab)"
    )


# -- real builds as a throwaway user ------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def run(self, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """*command* as this user, in a clean environment (a PATH without the sbin
        directories: the recipes add them), with umask 002 (Debian's for a user with a group
        of its own: the image must not depend on it)."""
        base = {"HOME": str(self.home), "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            ["runuser", "-u", self.name, "--", "env", "-i", *(f"{k}={v}" for k, v in {**base, **env}.items()),
             "sh", "-c", 'umask 002 && exec "$@"', "sh", *command],
            capture_output=True, text=True, check=False, timeout=900, stdin=subprocess.DEVNULL,
        )

    def files_in_tmp(self) -> list[str]:
        """What this user, or one of its subordinate ids, owns under /tmp."""
        owners = ["-uid", str(self.uid)]
        for first, count in subids.ranges(subids.SUBUID, self.name, self.uid):
            owners += ["-o", "(", "-uid", f"+{first - 1}", "-uid", f"-{first + count}", ")"]
        return subprocess.run(
            ["find", "/tmp", "-xdev", "-ignore_readdir_race", "(", *owners, ")", "-print"],
            capture_output=True, text=True, check=False,
        ).stdout.split()


@pytest.fixture
def user() -> Iterator[User]:
    """A throwaway ordinary user (with subordinate ids: Debian's useradd gives them),
    removed with its home directory afterwards."""
    name = f"nltest-img-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    finally:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
        leftovers = [p for p in (subids.SUBUID, subids.SUBGID, Path("/etc/passwd")) if name in p.read_text()]
        assert not leftovers, f"userdel left {name} in {leftovers}"


@pytest.fixture
def scratch(user: User) -> Iterator[Path]:
    """The user's directory for the build: the recipe (a checkout under /root is not
    readable by others), the kernel package, TMPDIR, the output. Removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"{user.name}-"))
    try:
        recipe = path / "images"
        shutil.copytree(image.recipe_dir(), recipe, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("debs", "tmp"):
            (path / name).mkdir()
        for item in (path, *path.rglob("*")):
            os.chown(item, user.uid, user.gid, follow_symlinks=False)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _kernel_deb(user: User, built: GuestImage, debs: Path) -> None:
    """Hand the user a copy of the kernel package root's build used (checked against apt
    then): no second download."""
    manifest = image._manifest(built.root)
    name = f"{manifest['kernel_package']}_{manifest['kernel_package_version'].replace(':', '%3a')}_amd64.deb"
    cached = image.cache_root() / "debs" / name
    if cached.is_file():
        shutil.copyfile(cached, debs / name)
        os.chown(debs / name, user.uid, user.gid)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_root
def test_the_default_image_built_by_an_ordinary_user_is_roots_byte_for_byte(user: User, scratch: Path):
    roots = image.default_image()
    _kernel_deb(user, roots, scratch / "debs")
    env = {"TMPDIR": str(scratch / "tmp"), "NETLAB_DEB_CACHE": str(scratch / "debs"),
           "NETLAB_KERNEL_PKG": image.VARIANTS[roots.variant]}
    proc = user.run(["bash", str(scratch / "images" / "build.sh"), str(scratch / "out")], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mknod" not in proc.stderr  # no step that needs root was tried
    for name in SAME_FILES:
        assert _sha256(scratch / "out" / name) == _sha256(roots.root / name), f"{name} differs from root's"
    assert list((scratch / "tmp").iterdir()) == []  # the build's work directory is gone
    assert all(f == str(scratch) or f.startswith(f"{scratch}/") for f in user.files_in_tmp())


@needs_root
def test_a_package_image_built_by_an_ordinary_user_has_root_owned_files(user: User, scratch: Path) -> None:
    if shutil.which("newuidmap") is None or shutil.which("newgidmap") is None:
        pytest.skip("unshare mode needs newuidmap: apt-get install uidmap")
    if not subids.ranges(subids.SUBUID, user.name, user.uid):
        pytest.skip(f"useradd gave {user.name} no subordinate ids (/etc/login.defs SUB_UID_COUNT)")
    roots = image.default_image()
    _kernel_deb(user, roots, scratch / "debs")
    base = scratch / "base"  # what the recipe reads of the default image
    base.mkdir()
    for name in ("manifest.txt", "kernel-version"):
        shutil.copyfile(roots.root / name, base / name)
    env = {"TMPDIR": str(scratch / "tmp"), "NETLAB_DEB_CACHE": str(scratch / "debs"),
           "NETLAB_APT_ARCHIVES": str(scratch / "debs" / "archives")}
    out = scratch / "out"
    recipe = scratch / "images" / "build-packages.sh"
    proc = user.run(["bash", str(recipe), str(base), str(out), "iperf3"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(line.startswith("iperf3=") for line in (out / "packages.txt").read_text().splitlines())
    listing = subprocess.run(
        ["unsquashfs", "-lln", str(out / "rootfs.sqfs")], capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    owners = {
        fields[5].removeprefix("squashfs-root") or "/": (fields[0], fields[1])
        for fields in (line.split() for line in listing) if len(fields) >= 6 and fields[1].count("/") == 1
    }
    assert owners["/"] == ("drwxr-xr-x", "0/0")
    assert owners["/init"] == ("-rwxr-xr-x", "0/0")
    assert owners["/usr/lib/netlab/reseed"] == ("-rwxr-xr-x", "0/0")
    assert owners["/root/.ssh"] == ("drwx------", "0/0")
    assert owners["/etc/shadow"] == ("-rw-r-----", "0/42")  # group shadow: dpkg's ids, mapped
    ids = {int(i) for _, owner in owners.values() for i in owner.split("/")}
    assert ids <= set(range(1000)) | {65534}, f"the builder's ids in the image: {sorted(ids)}"
    assert not any(path.startswith("/tmp/netlab-build") for path in owners)  # the hook's scratch
    # TMPDIR is private (the scratch directory is 0700): mmdebstrap worked in /tmp instead
    assert "mmdebstrap works in /tmp" in proc.stderr
    assert list((scratch / "tmp").iterdir()) == []  # the recipe's work directory is gone
    assert all(f == str(scratch) or f.startswith(f"{scratch}/") for f in user.files_in_tmp())


@pytest.mark.parametrize("name", ["build-packages.sh", "package-hook.sh", "harness.txt"])
def test_a_package_recipe_file_changes_package_images_only(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default, package = image.recipe_hash(), pi._recipe_digest()
    copy = tmp_path / "images"
    shutil.copytree(image.recipe_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / name).write_text((copy / name).read_text() + "\n# changed\n")
    monkeypatch.setattr(image, "recipe_dir", lambda: copy)
    monkeypatch.setattr(pi, "recipe_dir", lambda: copy)
    assert image.recipe_hash() == default
    assert pi._recipe_digest() != package
