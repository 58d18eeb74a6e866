"""A cache or runtime directory another user can change is refused before anything in
it is used, and a cached kernel package is used only with apt's checksum (crafted
directories and packages, no lab)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from pytest_netlab import ConfigError, trust
from pytest_netlab.image import cache_root
from pytest_netlab.trust import create_new_file, trusted_directory, verify_debs

NOBODY = 65534


def _refused(monkeypatch: pytest.MonkeyPatch, cache: Path, fragment: str) -> None:
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(cache))
    with pytest.raises(ConfigError, match=fragment) as info:
        cache_root()
    message = str(info.value)
    assert "\n" not in message and "NETLAB_CACHE_DIR" in message and str(cache) in message


def test_a_cache_writable_by_others_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    _refused(monkeypatch, cache, "writable by group and others")


# chown to another user needs root; the ordinary user's run checks the same code's other paths
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives a directory to another user: root only")


@needs_root
def test_a_cache_under_a_directory_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
):
    home = tmp_path / "home"  # e.g. HOME kept by sudo -E
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    _refused(monkeypatch, home / ".cache" / "pytest-netlab", f"owned by uid {NOBODY}")
    monkeypatch.delenv("NETLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        cache_root()


def test_a_symlink_to_a_writable_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (tmp_path / "link").symlink_to(open_dir)
    _refused(monkeypatch, tmp_path / "link", "writable by group and others")


@needs_root
def test_a_sticky_parent_is_fine_only_when_root_owns_it(tmp_path: Path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    assert trusted_directory(sticky / "mine", "cache", "fix it").is_dir()
    assert (sticky / "mine").stat().st_mode & 0o777 == 0o755
    os.chown(sticky, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        trusted_directory(sticky / "mine", "cache", "fix it")
    os.chown(sticky, 0, 0)
    with pytest.raises(ConfigError, match="writable"):
        trusted_directory(sticky, "cache", "fix it")  # the cache itself must not be sticky-shared


def _apt_version(package: str) -> str:
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                         capture_output=True, text=True, check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("Version: "))


def test_a_cached_package_with_the_wrong_checksum_is_removed(tmp_path: Path):
    version = _apt_version("bash")
    planted = tmp_path / f"bash_{version.replace(':', '%3a')}_amd64.deb"
    planted.write_bytes(b"not the package apt knows")
    unknown = tmp_path / "linux-image-9.9.9-cloud-amd64_9.9.9-1_amd64.deb"
    unknown.write_bytes(b"apt knows no such version")

    assert verify_debs(tmp_path) == [planted, unknown]
    assert not planted.exists() and not unknown.exists()


def test_a_cached_package_with_apts_checksum_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    good = tmp_path / "bash_5.2_amd64.deb"
    good.write_bytes(b"the package apt knows")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    monkeypatch.setattr(trust, "_apt_sha256", lambda package, version: digest if package == "bash" else None)
    assert verify_debs(tmp_path) == [] and good.exists()


def test_a_runtime_base_others_can_write_is_refused_for_a_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
):
    from pytest_netlab.session import runtime_base

    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o777)
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)  # a run that is not root
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    with pytest.raises(ConfigError, match=r"runtime directory .* writable by group and others"):
        runtime_base()
    shared.chmod(0o700)
    assert runtime_base() == shared / "netlab"


def test_files_made_in_the_cache_are_not_written_through_a_planted_symlink(tmp_path: Path):
    target = tmp_path / "etc-shadow"
    target.write_text("precious\n")
    planted = tmp_path / "abc.1-2.part"
    planted.symlink_to(target)
    with pytest.raises(FileExistsError):
        create_new_file(planted)
    assert target.read_text() == "precious\n"
    create_new_file(tmp_path / "new.part")
    assert (tmp_path / "new.part").stat().st_mode & 0o777 == 0o600
