"""Which directories and downloads the plugin may trust: it runs as root, boots kernels
and loads saved states from its cache, and keeps keys in its runtime directory.

A directory is trusted when it and every directory above it is owned by root or by the
running user and writable by no one else. The one exception is a parent directory with
the sticky bit owned by root (``/tmp``): others may write there but cannot rename or
remove what they do not own, so a directory of ours inside it stays ours. A directory
every user shares (the guest budget's) is trusted when it is root's and sticky like /tmp,
above root's directories only. A cached
kernel package is trusted when its SHA-256 is the one apt's package lists give for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)


def _problem(path: Path, last: bool) -> str | None:
    """What makes *path* (a directory on the way, or the *last* one) untrusted."""
    info = path.lstat()
    if info.st_uid not in (0, os.geteuid()):
        return f"{path} is owned by uid {info.st_uid}, not by root or you (uid {os.geteuid()})"
    if stat.S_ISLNK(info.st_mode):
        return None  # its target is checked on the resolved path
    if info.st_mode & 0o022:
        sticky_root = info.st_mode & stat.S_ISVTX and info.st_uid == 0
        if last or not sticky_root:
            return f"{path} is writable by {'group and others' if info.st_mode & 0o002 else 'its group'}"
    return None


def trusted_directory(path: Path, what: str, fix: str) -> Path:
    """Return *path* (made if missing, mode 0755) if only root and the running user can
    change what is in it.

    Raises:
        ConfigError: a component is owned by another user or writable by others; the
            message names it and says how to fix it (*fix*).
    """
    path = Path(os.path.abspath(path))
    for candidate in (path, path.resolve()):
        existing = [p for p in (*reversed(candidate.parents), candidate) if os.path.lexists(p)]
        for component in existing:
            problem = _problem(component, last=component == candidate)
            if problem:
                raise ConfigError(f"{what} {path} is not safe to use as root: {problem}; {fix}")
    for component in (*reversed(path.parents), path):
        if not os.path.lexists(component):
            component.mkdir(mode=0o755, exist_ok=True)
            os.chmod(component, 0o755)  # whatever the umask: writable by us only
    return path


def create_new_file(path: Path) -> None:
    """Create *path* empty, mode 0600, failing if anything (a symlink too) is there."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


def _apt_sha256(package: str, version: str) -> str | None:
    """The SHA-256 apt's package lists give for *package* at *version*."""
    out = subprocess.run(
        ["apt-cache", "show", f"{package}={version}"], capture_output=True, text=True, check=False,
    ).stdout
    for line in out.splitlines():
        if line.startswith("SHA256: "):
            return line.split()[1]
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_debs(directory: Path) -> list[Path]:
    """Remove every cached ``<package>_<version>_<arch>.deb`` in *directory* whose
    SHA-256 is not the one apt knows for it (or that apt does not know, or that is not a
    regular file); the build downloads it again. Return what was removed."""
    removed = []
    for deb in sorted(directory.glob("*.deb")):
        package, _, rest = deb.name.partition("_")
        version = rest.rpartition("_")[0].replace("%3a", ":")
        expected = _apt_sha256(package, version) if version else None
        if deb.is_symlink() or not deb.is_file() or expected is None or _sha256(deb) != expected:
            log.warning("removing cached package %s: its SHA-256 is not the one apt knows", deb)
            deb.unlink()
            removed.append(deb)
    return removed


def _shared_parent_problem(path: Path) -> str | None:
    """What lets someone other than root change *path*, a directory above a shared one."""
    info = path.lstat()
    if info.st_uid != 0:
        return f"{path} is owned by uid {info.st_uid}, not by root"
    if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        return f"{path} is writable by {'group and others' if info.st_mode & 0o002 else 'its group'}"
    return None


def _shared_problem(path: Path) -> str | None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return f"{path} is {'a symlink' if stat.S_ISLNK(info.st_mode) else 'not a directory'}"
    if info.st_uid != 0:
        return f"{path} is owned by uid {info.st_uid}, not by root"
    if not info.st_mode & stat.S_ISVTX:
        return f"{path} is not sticky (mode {stat.S_IMODE(info.st_mode):04o}, not 1777)"
    parents = (path.parent, path.parent.resolve())
    problems = (_shared_parent_problem(c) for p in parents for c in (*reversed(p.parents), p))
    problem = next((problem for problem in problems if problem), None)
    if problem is None and not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable by you (uid {os.geteuid()}; mode {stat.S_IMODE(info.st_mode):04o})"
    return problem


def shared_directory_problem(path: Path) -> str | None:
    """Why *path* cannot be a directory every user shares, like /tmp (``None``: it can).

    It must be a directory (not a symlink) owned by root, with the sticky bit (others may
    add files, but neither remove nor rename those of another user), that the running
    user may write; and every directory above it, as written and resolved, must be owned
    by root and writable by no one else, or sticky.
    """
    path = Path(os.path.abspath(path))
    try:
        return _shared_problem(path)
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as exc:
        return f"{path} cannot be checked: {exc.strerror}"
