"""What an ordinary user needs to build package images: ``mmdebstrap`` picks its
``unshare`` mode then, a user namespace mapping 65536 of the user's subordinate ids
(``/etc/subuid``, ``/etc/subgid``) through ``newuidmap``/``newgidmap`` (Debian's
``uidmap``), so that dpkg can own files as root and as system users. Root needs none
of it (``mmdebstrap``'s root mode).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: ids the namespace maps (0 to 65535: root, the system users, nobody)
NEEDED_IDS = 65536
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
#: the sysctls that keep ordinary users from making user namespaces: (name, its file,
#: the value that does, the value that allows them)
_SYSCTLS = (
    ("user.max_user_namespaces", Path("/proc/sys/user/max_user_namespaces"), "0", "65536"),
    ("kernel.unprivileged_userns_clone", Path("/proc/sys/kernel/unprivileged_userns_clone"), "0", "1"),
    ("kernel.apparmor_restrict_unprivileged_userns",
     Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"), "1", "0"),
)


@dataclass(frozen=True)
class Missing:
    """Why an unprivileged build cannot run, and what to do about it."""

    why: str
    fix: str

    def message(self) -> str:
        return f"{self.why}: {self.fix}"


def ranges(path: Path, user: str, uid: int) -> list[tuple[int, int]]:
    """The ``(first, count)`` ranges *path* (``/etc/subuid`` syntax) gives *user* (by name or uid)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) and all(f.isdigit() for f in fields[1:]):
            found.append((int(fields[1]), int(fields[2])))
    return found


def current_user() -> str:
    """The running user's name (its uid if it has none)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _free_start() -> int:
    """The first id above every range in /etc/subuid and /etc/subgid (at least 100000)."""
    end = 100000
    for path in (SUBUID, SUBGID):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for fields in (line.split(":") for line in lines):
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                end = max(end, int(fields[1]) + int(fields[2]))
    return end


def userns_disabled() -> Missing | None:
    """Why ordinary users may not make user namespaces here, as the sysctls say
    (``None``: none says so; the kernel may still refuse)."""
    for name, path, bad, good in _SYSCTLS:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value == bad:
            return Missing(
                f"unprivileged user namespaces are disabled ({name}={bad})",
                f"sysctl -w {name}={good} (as root), or build as root",
            )
    return None


def ids_missing() -> Missing | None:
    """What keeps the running user from mapping its subordinate ids into a user
    namespace: ``newuidmap``/``newgidmap``, or the ids (``None``: nothing, or root)."""
    uid = os.geteuid()
    if uid == 0:
        return None
    user = current_user()
    tools = [t for t in ("newuidmap", "newgidmap") if shutil.which(t) is None]
    if tools:
        return Missing(f"{' and '.join(tools)} not found", "apt-get install uidmap (as root)")
    short = [p for p in (SUBUID, SUBGID) if sum(c for _, c in ranges(p, user, uid)) < NEEDED_IDS]
    if short:
        first = _free_start()
        last = first + NEEDED_IDS - 1
        return Missing(
            f"{user} has fewer than {NEEDED_IDS} subordinate ids in {' and '.join(map(str, short))}",
            f"usermod --add-subuids {first}-{last} --add-subgids {first}-{last} {user} (as root)",
        )
    return None


def _probe() -> Missing | None:
    """Enter the namespace for real (AppArmor or a container may still refuse it)."""
    if shutil.which("mmdebstrap") is None:
        return Missing("mmdebstrap is not installed", "apt-get install mmdebstrap (as root)")
    proc = subprocess.run(
        ["mmdebstrap", "--unshare-helper", "true"], capture_output=True, text=True, check=False,
        stdin=subprocess.DEVNULL, timeout=60,
    )
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    return Missing(
        f"mmdebstrap cannot enter a user namespace ({'; '.join(lines[:2]) or f'status {proc.returncode}'})",
        "allow unprivileged user namespaces (AppArmor: kernel.apparmor_restrict_unprivileged_userns=0), "
        "or build as root",
    )


def unshare_missing() -> Missing | None:
    """What keeps the running user from building a package image (None: nothing, or root).
    Its message reads after "building a package image as USER (not root) needs ...".

    Checks ``newuidmap``/``newgidmap``, the user's subordinate ids and the kernel's
    user namespaces, then enters one (``mmdebstrap --unshare-helper true``).
    """
    if os.geteuid() == 0:
        return None
    return ids_missing() or userns_disabled() or _probe()


def describe() -> str:
    """How package images are built for the running user (for ``pytest-netlab doctor``)."""
    uid = os.geteuid()
    if uid == 0:
        return "as root: mmdebstrap's root mode"
    user = current_user()
    found = ranges(SUBUID, user, uid)
    ids = f" (subordinate ids from {found[0][0]}, newuidmap)" if found else ""
    return f"as {user}: mmdebstrap's unshare mode{ids}"

