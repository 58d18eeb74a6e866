"""The guest image: a Debian kernel and a small initramfs, built from the recipe in ``images/``.

The recipe (``images/build.sh``) takes every program from Debian packages installed on the
build host (``images/packages.txt``) and the kernel from ``apt-get download``. The result is
cached per recipe hash under :func:`cache_root`, built once even when several test processes
ask at the same time (a file lock: one builds, the others wait and reuse it).

There are two variants, one per Debian kernel flavour:

* ``cloud`` (``linux-image-cloud-amd64``), the default: boots fastest and leaves the most
  memory free, but Debian builds no e1000/e1000e/8139 NIC drivers for it;
* ``generic`` (``linux-image-amd64``): has those drivers. :func:`default_image` picks it when
  the ``modules`` asked for need it (see :func:`variant_for` and :meth:`GuestImage.for_modules`).

The kernel is the uncompressed ``vmlinux`` (QEMU boots it through its PVH entry), which saves
the in-guest decompression of the bzImage: 0.4 s (cloud, lz4) to 7 s (generic, xz) under TCG.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .errors import ImageError
from .locks import acquire_build_lock, unless_locked
from .subids import current_user
from .trust import trusted_directory, verify_debs

log = logging.getLogger(__name__)

#: image variant -> the Debian kernel metapackage it follows
VARIANTS: dict[str, str] = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
DEFAULT_VARIANT = "cloud"
#: modules only the generic kernel has (Debian's cloud kernel builds no such NIC drivers,
#: and no 9p file system for host directories in guests)
GENERIC_ONLY_MODULES: frozenset[str] = frozenset(
    {"e1000", "e1000e", "8139cp", "8139too", "9p", "9pnet_virtio"}
)
#: environment variable that forces one variant for every guest
VARIANT_ENV = "NETLAB_IMAGE_VARIANT"

#: recipe files of package images only (pytest_netlab.package_image): not in the default image's hash
PACKAGE_RECIPE_FILES = frozenset({"build-packages.sh", "package-hook.sh", "harness.txt"})
_INFO_FILE = "netlab-image.json"
_REQUIRED_FILES = ("vmlinux", "initrd.img", "cmdline", "kernel-version", "manifest.txt")
#: cached images of older recipes are removed once they are this old (pytest-netlab image clean: now)
PRUNE_AFTER_DAYS = 7


@dataclass(frozen=True)
class GuestImage:
    """A built guest image. ``kernel`` + ``initrd`` + ``cmdline`` are what QEMU needs
    (``-kernel``, ``-initrd``, ``-append`` with the ``netlab.*`` parameters added)."""

    kernel: Path
    initrd: Path
    cmdline: str
    root: Path
    variant: str
    hash: str
    kernel_version: str
    modules: frozenset[str]
    #: a package image (see :mod:`pytest_netlab.package_image`): its read-only root disk
    disk: Path | None = None
    #: the Debian packages a package image was asked for; empty for the default image
    packages: tuple[str, ...] = ()

    def drives(self) -> list[str]:
        """QEMU ``-drive`` values the image needs: a package image's read-only root disk
        (the first virtio disk, ``/dev/vda``), attached the same in templates and clones."""
        if self.disk is None:
            return []
        return [f"file={str(self.disk).replace(',', ',,')},if=virtio,format=raw,readonly=on"]

    def has_modules(self, names: Iterable[str]) -> bool:
        """True if this image's kernel has every module in ``names`` (built in or as a file)."""
        return all(_norm(n) in self.modules for n in names if n)

    def for_modules(self, names: Iterable[str]) -> GuestImage:
        """This image if it has ``names``, else the variant that has them (built if needed)."""
        wanted = [n for n in names if n]
        if self.has_modules(wanted):
            return self
        if self.disk is not None:
            missing = sorted(_norm(n) for n in wanted if _norm(n) not in self.modules)
            raise ImageError(
                f"package images boot the {self.variant} kernel {self.kernel_version}, which has no "
                f"module {', '.join(missing)}: give their guests virtio-net-pci NICs"
            )
        return default_image(modules=wanted)


def _norm(module: str) -> str:
    return module.strip().replace("-", "_")


def recipe_dir() -> Path:
    """The ``images/`` directory: installed package data, or next to the package in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "images", here.parent / "images"):
        if (candidate / "build.sh").is_file():
            return candidate
    raise ImageError(
        f"the guest image recipe (images/build.sh) is neither in {here / 'images'} nor in "
        f"{here.parent / 'images'}: reinstall pytest-netlab"
    )


CACHE_FIX = (
    "set NETLAB_CACHE_DIR to a directory that only you (or root) own and can write, "
    "e.g. /var/cache/pytest-netlab"
)


def cache_path() -> Path:
    """Where the cache is, checked and made by nothing (:func:`cache_root` does both):
    ``$NETLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-netlab``, else ``~/.cache/pytest-netlab``."""
    explicit = os.environ.get("NETLAB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pytest-netlab"


def cache_root() -> Path:
    """The cache directory (:func:`cache_path`), made if missing and trusted (see trust.py)."""
    return trusted_directory(cache_path(), "the cache directory", CACHE_FIX)


def variant_for(modules: Iterable[str] = ()) -> str:
    """The variant to boot for guests that need ``modules``: ``$NETLAB_IMAGE_VARIANT`` if set,
    else ``generic`` if a module is one only that kernel has, else ``cloud``."""
    forced = os.environ.get(VARIANT_ENV, "").strip()
    if forced:
        if forced not in VARIANTS:
            raise ImageError(f"{VARIANT_ENV}={forced!r}: use one of {', '.join(sorted(VARIANTS))}")
        return forced
    if any(_norm(m) in GENERIC_ONLY_MODULES for m in modules):
        return "generic"
    return DEFAULT_VARIANT


def _packages(recipe: Path) -> list[str]:
    lines = (recipe / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _package_versions(recipe: Path) -> str:
    """``name=version`` of each package in packages.txt, as dpkg knows it."""
    packages = _packages(recipe)
    if shutil.which("dpkg-query") is None:
        return "dpkg-query: not available\n"
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    found = sorted(proc.stdout.split())
    names = {f.split("=", 1)[0] for f in found}
    missing = sorted(p for p in packages if p not in names)
    return "\n".join(found + [f"{p}=MISSING" for p in missing]) + "\n"


def recipe_hash(variant: str = DEFAULT_VARIANT) -> str:
    """Hash of the recipe files, the variant and the versions of the Debian packages the
    recipe takes programs from: a change to any of them means a new image."""
    if variant not in VARIANTS:
        raise ImageError(f"unknown image variant {variant!r}: use one of {', '.join(sorted(VARIANTS))}")
    recipe = recipe_dir()
    digest = hashlib.sha256()
    digest.update(f"variant={variant} kernel={VARIANTS[variant]}\n".encode())
    files = (p for p in recipe.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    # docs do not change the image, nor does the package image recipe
    for path in sorted(f for f in files if f.suffix != ".md" and f.name not in PACKAGE_RECIPE_FILES):
        digest.update(path.relative_to(recipe).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(_package_versions(recipe).encode())
    return digest.hexdigest()[:16]


def _images_dir() -> Path:
    return cache_root() / "images"


def writable_images_dir() -> Path:
    """The images directory of the cache, made if missing, before a build writes to it.

    Raises:
        ImageError: the running user cannot write there (a cache another user made).
    """
    images = _images_dir()
    try:
        images.mkdir(parents=True, exist_ok=True)
        writable = os.access(images, os.W_OK | os.X_OK)
    except OSError as exc:
        writable, images = False, Path(exc.filename or images)
    if not writable:
        raise ImageError(
            f"cannot build a guest image: {images} is not writable by {current_user()}: set "
            "NETLAB_CACHE_DIR to a directory of yours (the default is ~/.cache/pytest-netlab)"
        )
    return images


def _image_dir(variant: str, digest: str) -> Path:
    return _images_dir() / f"{variant}-{digest}"


def _lock(variant: str, digest: str) -> FileLock:
    return FileLock(str(_images_dir() / f".{variant}-{digest}.lock"))


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in (*_REQUIRED_FILES, _INFO_FILE))


def _manifest(path: Path) -> dict[str, str]:
    result: dict[str, str] = {}
    try:
        text = (path / "manifest.txt").read_text()
    except OSError:
        return result
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key.strip()] = value.strip()
    return result


def _load(path: Path, variant: str, digest: str) -> GuestImage:
    mark_used(path)
    manifest = _manifest(path)
    modules = {_norm(m) for m in manifest.get("modules", "").split()}
    builtin = path / "modules.builtin"
    if builtin.is_file():
        modules |= {_norm(Path(line).stem) for line in builtin.read_text().split()}
    return GuestImage(
        kernel=path / "vmlinux",
        initrd=path / "initrd.img",
        cmdline=(path / "cmdline").read_text().strip(),
        root=path,
        variant=variant,
        hash=digest,
        kernel_version=(path / "kernel-version").read_text().strip(),
        modules=frozenset(modules),
    )


USED_MARKER = "last-used"  # touched at each use of a cached image; pruning goes by it


def mark_used(path: Path) -> None:
    """Record that the cached image in *path* is used now (pruning goes by last use, not by
    build time: a long-lived checkout's image must not vanish under a running test)."""
    (path / USED_MARKER).touch()  # sets the times of an existing marker to now too


def last_used(path: Path) -> float:
    """When the cached image in *path* was last used (its build time if never marked)."""
    for candidate in (path / USED_MARKER, path):
        try:
            return candidate.stat().st_mtime
        except FileNotFoundError:
            continue
    return 0.0


def default_image(
    *,
    rebuild: bool = False,
    progress: Callable[[str], None] | None = None,
    modules: Iterable[str] = (),
) -> GuestImage:
    """The cached guest image for guests that need ``modules``, built first if missing.

    Safe to call from several processes at once: one builds (into a temporary directory,
    renamed into place when complete), the others wait for it and reuse the result.
    Raises :class:`~pytest_netlab.errors.ImageError` when the build fails.
    """
    wanted = [m for m in modules if m]
    variant = variant_for(wanted)
    image = _get(variant, rebuild=rebuild, progress=progress)
    if not image.has_modules(wanted):
        missing = sorted(_norm(m) for m in wanted if _norm(m) not in image.modules)
        raise ImageError(
            f"the {variant} guest kernel {image.kernel_version} has no module {', '.join(missing)}: "
            f"add it to {recipe_dir() / 'modules.txt'} (or set {VARIANT_ENV}=generic)"
        )
    return image


def _get(variant: str, *, rebuild: bool, progress: Callable[[str], None] | None) -> GuestImage:
    digest = recipe_hash(variant)
    final = _image_dir(variant, digest)
    if not rebuild and _is_complete(final):
        return _load(final, variant, digest)
    writable_images_dir()
    lock = _lock(variant, digest)
    acquire_build_lock(
        lock, f"waiting for another process to build the {variant} guest image ({final})",
        lambda line: say(progress, line),
    )
    try:
        if not rebuild and _is_complete(final):
            return _load(final, variant, digest)
        _build(variant, digest, final, progress)
        _prune(variant, keep=final)
        return _load(final, variant, digest)
    finally:
        lock.release()


def say(progress: Callable[[str], None] | None, message: str) -> None:
    """Log a build step, and show it through *progress* if given."""
    log.info("%s", message)
    if progress is not None:
        progress(message)


def _build(variant: str, digest: str, final: Path, progress: Callable[[str], None] | None) -> None:
    """Run the recipe into a temporary directory and rename it to ``final`` (lock held)."""
    images = _images_dir()
    for stale in images.glob(f".tmp-{variant}-{digest}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a build that died; we hold the lock
    path = os.environ.get("PATH", os.defpath)  # the recipe adds the sbin directories itself
    if shutil.which("bash", path=path) is None:
        raise ImageError(
            f"cannot build the guest image: bash not found in PATH={path} (apt-get install bash)"
        )
    script = recipe_dir() / "build.sh"
    debs = cache_root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    verify_debs(debs)  # a cached kernel package is booted only if apt vouches for it
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{variant}-{digest}-", dir=images))
    out = tmp / "image"
    command = ["bash", str(script), str(out)]
    env = dict(os.environ, PATH=path, NETLAB_KERNEL_PKG=VARIANTS[variant], NETLAB_DEB_CACHE=str(debs))
    say(progress, f"building the {variant} guest image {digest} (takes about a minute)")
    started = time.monotonic()
    try:
        status, tail = run_recipe(command, env, tmp, "build.sh: ", progress)
        if status != 0:
            raise ImageError(recipe_failure("the guest image", command, status, tail, _PACKAGES_HINT))
        missing = [name for name in _REQUIRED_FILES if not (out / name).is_file()]
        if missing:
            raise ImageError(
                f"{' '.join(command)} exited 0 but made no {', '.join(missing)}: "
                f"last output: {' | '.join(tail[-3:])}"
            )
        seconds = time.monotonic() - started
        manifest = _manifest(out)
        info = {
            "variant": variant,
            "hash": digest,
            "built_at": time.time(),
            "build_seconds": round(seconds, 1),
            **manifest,
        }
        (out / _INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():  # rebuild: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".old-{variant}-", dir=images))
            final.rename(old / "image")
            shutil.rmtree(old, ignore_errors=True)
        out.rename(final)
        say(progress, f"built the {variant} guest image in {seconds:.0f} s: {final}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_recipe(
    command: list[str], env: dict[str, str], cwd: Path, prefix: str, progress: Callable[[str], None] | None
) -> tuple[int, list[str]]:
    """Run a recipe's *command*; each line it logs about a step (starting with *prefix*)
    goes to *progress*. Return its exit status and its last 40 lines of output."""
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, errors="replace", env=env, cwd=cwd,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if line.startswith(prefix):
                say(progress, line)
            else:
                log.debug("%s", line)
        return proc.wait(), list(tail)


_PACKAGES_HINT = " (see images/packages.txt for what the build host needs; apt-get update first)"


def recipe_failure(what: str, command: list[str], status: int, tail: list[str], hint: str = "") -> str:
    """The message of a failed build of *what* by *command*: its first ``error:`` line,
    else its last lines and *hint*."""
    errors = [ln for ln in tail if "error:" in ln]
    detail = errors[0] if errors else " | ".join(ln for ln in tail[-3:] if ln.strip()) + hint
    return f"building {what} failed: {' '.join(command)} exited with status {status}: {detail}"


def _prune(variant: str, keep: Path) -> None:
    """Remove other cached images of ``variant`` (older recipes) not used for a week that
    nobody is building. Recent ones stay: another checkout (a branch, a second run)
    may be using them right now."""
    too_old = time.time() - PRUNE_AFTER_DAYS * 86400
    for path in _images_dir().glob(f"{variant}-*"):
        if path == keep or not path.is_dir() or last_used(path) > too_old:
            continue
        digest = path.name[len(variant) + 1 :]
        with unless_locked(_lock(variant, digest)) as held:
            if held:
                log.info("removing the outdated guest image %s", path)
                shutil.rmtree(path, ignore_errors=True)


def _sizes(path: Path) -> dict[str, int]:
    return {
        name: (path / name).stat().st_size
        for name in ("vmlinux", "vmlinuz", "initrd.img")
        if (path / name).is_file()
    }


def image_info() -> dict[str, object]:
    """What ``pytest-netlab image info`` shows: where the images are, their hashes, sizes, built or not."""
    variants: dict[str, object] = {}
    for variant, package in VARIANTS.items():
        digest = recipe_hash(variant)
        path = _image_dir(variant, digest)
        entry: dict[str, object] = {
            "path": str(path),
            "hash": digest,
            "built": _is_complete(path),
            "kernel_package": package,
        }
        if entry["built"]:
            with contextlib.suppress(OSError, ValueError):
                entry.update(json.loads((path / _INFO_FILE).read_text()))
            entry["sizes"] = _sizes(path)
        variants[variant] = entry
    default = variants[DEFAULT_VARIANT]
    assert isinstance(default, dict)
    images = _images_dir()
    cached = sorted(str(p) for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    return {
        "cache_root": str(cache_root()),
        "recipe_dir": str(recipe_dir()),
        "default_variant": DEFAULT_VARIANT,
        "path": default["path"],
        "hash": default["hash"],
        "built": default["built"],
        "variants": variants,
        "cached": cached,
    }


def clean_images() -> list[Path]:
    """Remove every cached image (and the downloaded kernel packages); return what was removed.
    Images that another process is building right now are left alone."""
    removed: list[Path] = []
    images = _images_dir()
    if images.is_dir():
        for path in sorted(images.iterdir()):
            if not path.is_dir():
                continue
            name = path.name.removeprefix(".tmp-")
            variant, _, rest = name.partition("-")
            digest = rest.split("-", 1)[0]
            locked = variant in VARIANTS and digest and not path.name.startswith(".old-")
            with unless_locked(_lock(variant, digest)) if locked else contextlib.nullcontext(True) as held:
                if not held:
                    log.info("not removing %s: a build holds its lock", path)
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    debs = cache_root() / "debs"
    if debs.is_dir():
        shutil.rmtree(debs, ignore_errors=True)
        removed.append(debs)
    return removed
