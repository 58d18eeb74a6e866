"""Package images: the default image's harness plus any Debian packages, for guests
that run the network software under test (FRR, BIRD, nftables, WireGuard, iperf3...).

``images/build-packages.sh`` installs the packages with ``mmdebstrap`` (dpkg with
maintainer scripts) from the host's own apt sources and packs the root file system as
a read-only squashfs disk. A guest boots the default image's kernel and initramfs,
which mounts that disk under a writable tmpfs overlay and ``switch_root``\\ s to the same
netlab init on it (``netlab.overlay=1``, see ``images/init``). The initramfs stays
small, so the image's size costs neither boot nor resume time.

An image is cached under :func:`~pytest_netlab.image.cache_root` per package set,
recipe, base image and resolved package versions (so a Debian point release makes a
new image): ``images/pkg-<id>/``. Finding it again is a file lookup keyed by the
package set and a fingerprint of apt's package lists, so only a changed archive index
costs a new resolution (``apt-get --simulate``, a few seconds). One build runs under a
file lock across processes, into a temporary directory renamed when complete. Each use
touches ``last-used``; images unused for :data:`~pytest_netlab.image.PRUNE_AFTER_DAYS`
days are removed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from filelock import FileLock

from .errors import ConfigError, ImageError
from .guest_protocol import OVERLAY_ROOT
from .image import (
    PACKAGE_RECIPE_FILES,
    PRUNE_AFTER_DAYS,
    GuestImage,
    cache_root,
    default_image,
    last_used,
    mark_used,
    recipe_dir,
    recipe_failure,
    run_recipe,
    say,
    writable_images_dir,
)
from .locks import acquire_build_lock, unless_locked
from .subids import current_user, unshare_missing
from .trust import verify_debs

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: what the initramfs needs to mount a package image's disk (see images/init)
PREFIX = "pkg-"
_FORMAT = 1
_INFO = "netlab-image.json"
_DISK = "rootfs.sqfs"
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
#: what of the recipe a package image's key hashes: the other files (init, reseed.c...)
#: are in the base image's hash (image.recipe_hash), which the key has too
_RECIPE_FILES = tuple(sorted(PACKAGE_RECIPE_FILES))
_APT_LISTS = Path("/var/lib/apt/lists")


def parse_packages(value: str | Iterable[str]) -> tuple[str, ...]:
    """Debian package names from a list or a comma/space separated string, sorted and
    without duplicates.

    Raises:
        ConfigError: a name that is not a Debian package name, or none at all.
    """
    names = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"package name {name!r} is not accepted: give Debian package names "
                "(lower case letters, digits, '+', '-', '.'), e.g. 'frr' or 'iperf3'"
            )
    if not names:
        raise ConfigError("no packages given: name at least one Debian package, e.g. packages=['frr']")
    return tuple(sorted(set(names)))


def harness_packages() -> list[str]:
    """The packages every package image has besides the user's (``images/harness.txt``)."""
    lines = (recipe_dir() / "harness.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _recipe_digest() -> str:
    return _digest_of(recipe_dir())


@functools.cache
def _digest_of(recipe: Path) -> str:
    digest = hashlib.sha256()
    for name in _RECIPE_FILES:
        digest.update(name.encode() + b"\0" + (recipe / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _apt_fingerprint() -> str:
    """Changes whenever ``apt-get update`` fetched new package lists."""
    digest = hashlib.sha256()
    for path in sorted(_APT_LISTS.glob("*Release")) + sorted(_APT_LISTS.glob("*Packages*")):
        stat = path.stat()
        digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def resolve(packages: Iterable[str]) -> list[str]:
    """``name=version`` of every package apt would install for *packages* and the
    harness on an empty system (``apt-get --simulate``, the host's apt sources).

    Raises:
        ConfigError: apt cannot install them (an unknown package, a conflict); the
            message has apt's own error lines.
        ImageError: apt-get is not there.
    """
    wanted = list(packages)
    if shutil.which("apt-get") is None:
        raise ImageError("cannot build a package image: apt-get not found (a Debian host is needed)")
    proc = subprocess.run(
        ["apt-get", "--simulate", "--no-install-recommends", "-o", "Dir::State::status=/dev/null",
         "-o", "Debug::NoLocking=1", "install", *harness_packages(), *wanted],
        capture_output=True, text=True, check=False, env=dict(os.environ, LC_ALL="C"),
    )
    if proc.returncode != 0:
        lines = proc.stdout.splitlines() + proc.stderr.splitlines()
        reasons = [ln.strip() for ln in lines if ln.startswith("E:") or " : " in ln]
        raise ConfigError(
            f"packages {', '.join(wanted)}: apt cannot install them: "
            + (" ".join(reasons) or f"apt-get exited with status {proc.returncode}")
        )
    found = re.findall(r"^Inst (\S+) \((\S+)", proc.stdout, re.MULTILINE)
    return sorted(f"{name}={version}" for name, version in found)


def _images_dir() -> Path:
    return cache_root() / "images"


def _lock(images: Path, image_id: str) -> FileLock:
    return FileLock(str(images / f".{PREFIX}{image_id}.lock"))


def _index_file(images: Path, packages: tuple[str, ...], base: GuestImage) -> Path:
    key = hashlib.sha256(
        json.dumps([_FORMAT, packages, base.hash, _recipe_digest(), _apt_fingerprint()]).encode()
    ).hexdigest()[:24]
    return images / ".pkg-index" / key


def _image_id(packages: tuple[str, ...], base: GuestImage, versions: list[str]) -> str:
    ident = [_FORMAT, packages, base.hash, _recipe_digest(), versions]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _is_complete(path: Path) -> bool:
    return (path / _DISK).is_file() and (path / _INFO).is_file()


def package_image(
    packages: str | Iterable[str], *, progress: Progress | None = None, base: GuestImage | None = None,
) -> GuestImage:
    """The cached image with the default harness plus *packages*, built first if missing.

    Raises:
        ConfigError: a bad package name, or a set apt cannot install (before anything
            is built or cached).
        ImageError: the build failed (nothing is left behind).
    """
    names = parse_packages(packages)
    if base is None or base.disk is not None:  # built on the plain default image only
        base = default_image(progress=progress)
    images = _images_dir()
    index = _index_file(images, names, base)
    try:
        known = images / index.read_text().strip()
    except OSError:
        known = None
    if known is not None and _is_complete(known):
        _prune_once()
        return _load(known, base)
    say(progress, f"resolving the Debian packages {' '.join(names)}")
    image_id = _image_id(names, base, resolve(names))
    path = images / f"{PREFIX}{image_id}"
    if not _is_complete(path):
        _refuse_unbuildable(names)
        _build_locked(names, base, image_id, path, progress)
    index.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{index.name}.", suffix=".tmp", dir=index.parent)
    with os.fdopen(fd, "w") as handle:  # a name of its own: other processes and threads write too
        handle.write(path.name + "\n")
    os.replace(tmp, index)
    return _load(path, base)


def _refuse_unbuildable(names: tuple[str, ...]) -> None:
    """Fail at once, saying what to do, where an ordinary user's build cannot run.

    Raises:
        ImageError: the user lacks what mmdebstrap's unshare mode needs.
    """
    missing = unshare_missing()
    if missing is not None:
        raise ImageError(
            f"cannot build the package image ({' '.join(names)}) as {current_user()} (not root, "
            f"so with mmdebstrap's unshare mode): {missing.message()}"
        )


def _build_locked(
    names: tuple[str, ...], base: GuestImage, image_id: str, path: Path, progress: Progress | None
) -> None:
    lock = _lock(writable_images_dir(), image_id)
    acquire_build_lock(
        lock, f"waiting for another process to build the package image {path.name}",
        lambda line: say(progress, line),
    )
    try:
        if not _is_complete(path):
            _build(names, base, image_id, path, progress)
    finally:
        lock.release()
    prune()


def _load(path: Path, base: GuestImage) -> GuestImage:
    info = json.loads((path / _INFO).read_text())
    mark_used(path)
    modules = set(base.modules)
    modules_file = path / "modules.txt"
    if modules_file.is_file():
        modules |= {m.replace("-", "_") for m in modules_file.read_text().split()}
    return replace(
        base,
        cmdline=f"{base.cmdline} {OVERLAY_ROOT}",
        root=path,
        hash=str(info["id"]),
        modules=frozenset(modules),
        disk=path / _DISK,
        packages=tuple(info["packages"]),
    )


def _build(
    names: tuple[str, ...], base: GuestImage, image_id: str, final: Path, progress: Progress | None
) -> None:
    """Run the recipe into a temporary directory and rename it to *final* (lock held)."""
    images = _images_dir()
    for stale in images.glob(f".tmp-{PREFIX}{image_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a build that died; we hold the lock
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{PREFIX}{image_id}-", dir=images))
    out = tmp / "image"
    debs = cache_root() / "debs"
    if debs.is_dir():
        verify_debs(debs)  # the kernel package the modules come from, as for the default image
    command = ["bash", str(recipe_dir() / "build-packages.sh"), str(base.root), str(out), *names]
    env = dict(os.environ, NETLAB_DEB_CACHE=str(debs), NETLAB_APT_ARCHIVES=str(debs / "archives"))
    say(progress, f"building the package image {final.name} ({' '.join(names)}); takes a minute or two")
    started = time.monotonic()
    try:
        status, tail = run_recipe(command, env, tmp, "build-packages.sh: ", progress)
        if status != 0 or not (out / _DISK).is_file():
            raise ImageError(recipe_failure(f"the package image ({' '.join(names)})", command, status, tail))
        seconds = time.monotonic() - started
        info = {
            "id": image_id, "packages": list(names), "base": base.hash, "built_at": time.time(),
            "build_seconds": round(seconds, 1), "disk_bytes": (out / _DISK).stat().st_size,
        }
        (out / _INFO).write_text(json.dumps(info, indent=2) + "\n")
        out.rename(final)
        say(progress, f"built the package image in {seconds:.0f} s: {final}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.cache
def _prune_once() -> None:
    """Prune at the first lookup of a process too, not only after a build."""
    prune()


def list_images() -> list[dict[str, object]]:
    """Every cached package image: its packages, size, last use and path."""
    found = []
    for path in sorted(_images_dir().glob(f"{PREFIX}*")):
        if not _is_complete(path):
            continue
        info = json.loads((path / _INFO).read_text())
        found.append({
            "path": str(path), "packages": info.get("packages", []),
            "size_bytes": (path / _DISK).stat().st_size, "last_used": last_used(path),
            "built_at": info.get("built_at"),
        })
    return found


def prune(older_than_days: float = PRUNE_AFTER_DAYS) -> list[Path]:
    """Remove the package images unused for *older_than_days* (0: all of them), except
    those being built; return what was removed."""
    too_old = time.time() - older_than_days * 86400
    images = _images_dir()
    old = [(p, p.name.removeprefix(PREFIX)) for p in sorted(images.glob(f"{PREFIX}*"))
           if p.is_dir() and last_used(p) <= too_old]
    # a build that was killed leaves its temporary directory; one whose lock is free is dead
    dead = [(p, p.name.removeprefix(f".tmp-{PREFIX}").split("-")[0])
            for p in sorted(images.glob(f".tmp-{PREFIX}*"))]
    removed = []
    for path, image_id in old + dead:
        with unless_locked(_lock(images, image_id)) as held:
            if held:
                log.info("removing %s", path)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
