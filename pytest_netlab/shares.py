"""Host directories in guests: what ``netlab.vm(..., shares=...)`` accepts, checked before
anything starts, and the guest commands that mount them.

A share is a QEMU virtio-9p device (``-fsdev local`` + ``-device virtio-9p-pci``) whose
mount tag is ``netlab<i>`` by position; the guest mounts it over SSH (or its serial
console) once it is up, for resumed and cold-booted guests alike, so no mount is ever
part of a saved state. Debian's cloud kernel has no 9p, so a guest with shares runs the
``generic`` image variant (see :mod:`pytest_netlab.image`).

Two forms, as a demanding user expects from ``docker run -v``:

* ``shares={"/abs/host/dir": "/mnt/dir"}``: read-only shares;
* ``shares=[netlab.share("/abs/host/dir", "/mnt/out", rw=True), ...]``: a list of
  :class:`Share`, each read-only unless ``rw=True``.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

#: guest kernel modules a share needs (the 9p file system loads itself on the first mount)
SHARE_MODULES: tuple[str, ...] = ("9p", "9pnet_virtio")
MAX_SHARES = 8
#: 9p mount options: the Linux 9p2000.L dialect, and 256 KiB messages (the 8 KiB default
#: makes QEMU warn of degraded performance); no cache, so host writes show at once
MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144"
#: guest directories the harness itself lives in: a share over one would break the guest
_GUEST_SYSTEM = frozenset({
    "/", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/usr/bin", "/usr/sbin", "/usr/lib",
    "/etc", "/root", "/run", "/var", "/tmp", "/dev", "/proc", "/sys",
})
_GUEST_KERNEL_TREES = ("/dev/", "/proc/", "/sys/")


@dataclass(frozen=True)
class Share:
    """A host directory (*host*, absolute) seen at *guest* (absolute) in a guest;
    read-only unless *rw*. Made by ``netlab.share()``; checked by :func:`shares_of`."""

    host: Path
    guest: str
    rw: bool = False


def share_tag(index: int) -> str:
    """The virtio-9p mount tag of a guest's share at *index*: the same in every guest, so
    a saved state's devices fit every guest with as many shares."""
    return f"netlab{index}"


def share(host: str | os.PathLike[str], guest: str, *, rw: bool = False) -> Share:
    """A :class:`Share`, checked: see :func:`shares_of` for what is refused.

    Raises:
        ConfigError: a bad host or guest path, or *rw* not a bool.
    """
    return _checked(host, guest, rw)


def shares_of(value: object, guest_name: str) -> tuple[Share, ...]:
    """The shares of guest *guest_name* given as ``{host: guest}`` (read-only) or a list
    of :class:`Share`, checked.

    Raises:
        ConfigError: a form other than those two; a host path that is relative, missing,
            not a directory, not accessible (or, for ``rw``, on a file system without
            user extended attributes); a guest path that is not absolute and normal, one
            of the guest's system directories, or inside another share; a host or guest
            path given twice; more than :data:`MAX_SHARES` shares.
    """
    try:
        if isinstance(value, Mapping):
            items = [_checked(host, guest, False) for host, guest in value.items()]
        elif isinstance(value, (list, tuple)) and all(isinstance(s, Share) for s in value):
            items = [_checked(s.host, s.guest, s.rw) for s in value]
        else:
            items = None
    except ConfigError as exc:
        raise ConfigError(f"{guest_name}: {exc}") from None
    if items is None:
        raise ConfigError(
            f"shares={value!r} of {guest_name!r} is not accepted: give a dict "
            "{'/abs/host/dir': '/guest/dir'} (read-only) or a list of "
            "netlab.share('/abs/host/dir', '/guest/dir', rw=True)"
        )
    if len(items) > MAX_SHARES:
        raise ConfigError(f"{guest_name}: {len(items)} shares: give at most {MAX_SHARES}")
    _no_overlaps(items, guest_name)
    return tuple(items)


def _checked(host: object, guest: object, rw: object) -> Share:
    if not isinstance(rw, bool):
        raise ConfigError(f"share rw={rw!r} is not accepted: give True or False")
    return Share(_host_dir(host, rw), _guest_dir(guest), rw)


def _host_dir(value: object, rw: bool) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value) or "\0" in str(value):
        raise ConfigError(f"share host path {value!r} is not accepted: give an absolute path of a directory")
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(
            f"share host path {str(value)!r} is relative: give an absolute path "
            f"(e.g. {str(Path.cwd() / path)!r} or tmp_path / ...)"
        )
    if not path.exists():
        raise ConfigError(f"share host path {str(value)!r} does not exist: give an existing directory")
    if not path.is_dir():
        raise ConfigError(f"share host path {str(value)!r} is not a directory: share a directory")
    if not os.access(path, os.R_OK | os.X_OK | (os.W_OK if rw else 0)):
        raise ConfigError(
            f"share host path {str(value)!r} is not {'writable' if rw else 'readable'} by this process"
        )
    if rw:
        _check_user_xattrs(path)
    return Path(os.path.realpath(path))


def _check_user_xattrs(path: Path) -> None:
    """QEMU keeps what the guest sets (owner, mode) of files in an rw share in ``user.*``
    extended attributes (security_model=mapped-xattr): the host's file system must have them."""
    probe = "user.netlab.probe"
    try:
        os.setxattr(path, probe, b"1")
        os.removexattr(path, probe)
    except OSError as exc:
        raise ConfigError(
            f"share host path {str(path)!r} takes no user extended attributes ({exc.strerror}), "
            "which an rw share needs: use a directory on ext4, xfs or btrfs (tmpfs has them "
            "from Linux 6.6), or share it read-only"
        ) from None


def _guest_dir(value: object) -> str:
    if not isinstance(value, str) or not value.isprintable() or not value.startswith("/") \
            or posixpath.normpath(value) != value or value.startswith("//"):
        raise ConfigError(
            f"share guest path {value!r} is not accepted: give an absolute, normalised path "
            "(no '..', '.', '//' or trailing '/'), e.g. '/mnt/build'"
        )
    if value in _GUEST_SYSTEM or value.startswith(_GUEST_KERNEL_TREES):
        raise ConfigError(
            f"share guest path {value!r} is a directory the guest's own system needs: "
            "mount the share elsewhere, e.g. '/mnt/build' or '/opt/app'"
        )
    return value


def _no_overlaps(items: Sequence[Share], guest_name: str) -> None:
    for i, one in enumerate(items):
        for other in items[:i]:
            if one.host == other.host:
                raise ConfigError(
                    f"{guest_name}: share host path {str(one.host)!r} is given twice: share a "
                    "directory once"
                )
            if one.guest == other.guest:
                raise ConfigError(
                    f"{guest_name}: share guest path {one.guest!r} is given twice: give each "
                    "share its own guest path"
                )
            for inner, outer in ((one.guest, other.guest), (other.guest, one.guest)):
                if inner.startswith(outer + "/"):
                    raise ConfigError(
                        f"{guest_name}: share guest path {inner!r} is inside share {outer!r}: "
                        "give shares guest paths side by side"
                    )


def mount_script(shares: Sequence[Share]) -> str:
    """One shell command that mounts *shares* in the guest (read-only ones with ``ro``;
    QEMU refuses their writes anyway)."""
    return " && ".join(
        f"mkdir -p {shlex.quote(s.guest)} && mount -t 9p -o {MOUNT_OPTIONS}{'' if s.rw else ',ro'} "
        f"{share_tag(i)} {shlex.quote(s.guest)}"
        for i, s in enumerate(shares)
    )
