"""Who QEMU runs as, and the sandbox it runs in: never root.

QEMU parses what the guest sends (NICs, slirp, 9p); a bug there must not be root on
the host. When the tests run as root, QEMU runs as a user of its own: the one named by
``NETLAB_QEMU_USER``, else ``netlab-qemu`` (setup.sh makes it), else, under ``sudo``, the
user who typed the command; with none of them the lab refuses to start a guest (there
is no silent fallback to root or to ``nobody``). When the tests run as an ordinary user,
QEMU runs as that user. Either way it starts under ``setpriv --no-new-privs`` with no
capabilities and QEMU's seccomp sandbox (:data:`SANDBOX`). It gets what it needs as
file descriptors the parent opened: TAPs, QMP, console, log, kernel, initrd, disks,
saved states.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

QEMU_USER = "netlab-qemu"
USER_ENV = "NETLAB_QEMU_USER"
CREATE_USER = f"useradd --system --no-create-home --shell /usr/sbin/nologin {QEMU_USER}"
# seccomp: no obsolete system calls, no set*uid, no fork/exec, no scheduler or
# memory-policy changes
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


SANDBOX_SPAWN = "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny"


def sandbox_option(spawn: bool) -> str:
    """``-sandbox`` of a QEMU that may start programs (*spawn*: a NAT NIC's host ports,
    whose relay QEMU runs per connection) or not.

    A spawning QEMU needs ``elevateprivileges=allow`` too: libslirp's child calls
    ``setsid()``, which that rule forbids (in the children as well). Without
    capabilities and with no-new-privs, a ``setuid()`` still gets nothing.
    """
    return SANDBOX_SPAWN if spawn else SANDBOX


def rootless() -> bool:
    """Whether this run makes its labs without root: the tests run as an ordinary user,
    and each lab's network namespace is owned by a user namespace of its own
    (:mod:`pytest_netlab.nsholder`) instead of being bound under /run/netns."""
    return os.geteuid() != 0


@dataclass(frozen=True)
class QemuIdentity:
    """The user and group QEMU runs as, and why them."""

    uid: int
    gid: int
    name: str | None  # None: a uid without a passwd entry (no supplementary groups then)
    why: str

    def describe(self) -> str:
        return f"{self.name or 'uid ' + str(self.uid)} (uid {self.uid}, gid {self.gid}; {self.why})"

    def groups(self) -> set[int]:
        if self.name is None:
            return {self.gid}
        return {self.gid, *os.getgrouplist(self.name, self.gid)}

    def setpriv_args(self) -> list[str]:
        """``setpriv`` options that make the child this identity, without capabilities
        and unable to gain privileges again (``execve`` of setuid files included)."""
        args = ["--no-new-privs", "--inh-caps=-all"]
        if self.uid == os.geteuid():
            return args  # an ordinary user's run: QEMU is that user already
        groups = ["--init-groups"] if self.name is not None else ["--clear-groups"]
        return [*args, "--reuid", str(self.uid), "--regid", str(self.gid), *groups]

    def may(self, path: Path, mode: int) -> bool:
        """Whether this identity may access the file at *path* with *mode*
        (``os.R_OK``, ``os.W_OK``, ``os.X_OK``, or'ed) by its permission bits; a file
        with an access ACL is assumed to allow it (QEMU then says if not)."""
        st = path.stat()
        with contextlib.suppress(OSError):
            if "system.posix_acl_access" in os.listxattr(path):
                return True
        if st.st_uid == self.uid:
            shift = 6
        elif st.st_gid in self.groups():
            shift = 3
        else:
            shift = 0
        return (st.st_mode >> shift) & mode == mode


def qemu_identity() -> QemuIdentity:
    """Who QEMU runs as in this process (see the module's text).

    Raises:
        ConfigError: the tests run as root and no unprivileged user for QEMU exists, or
            ``NETLAB_QEMU_USER`` names root or no user.
    """
    if os.geteuid() != 0:
        return QemuIdentity(os.geteuid(), os.getegid(), _name_of(os.geteuid()), "the user running the tests")
    named = os.environ.get(USER_ENV)
    if named:
        entry = _lookup(named)
        if entry is None or entry.pw_uid == 0:
            raise ConfigError(
                f"{USER_ENV}={named!r} is {'root' if entry else 'no user'}: "
                "name an existing unprivileged user for QEMU, or unset it"
            )
        return QemuIdentity(entry.pw_uid, entry.pw_gid, entry.pw_name, f"named by {USER_ENV}")
    entry = _lookup(QEMU_USER)
    if entry is not None and entry.pw_uid != 0:
        return QemuIdentity(entry.pw_uid, entry.pw_gid, entry.pw_name, "QEMU's own user")
    sudo_uid, sudo_gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if sudo_uid.isdigit() and sudo_gid.isdigit() and int(sudo_uid) != 0:
        return QemuIdentity(int(sudo_uid), int(sudo_gid), _name_of(int(sudo_uid)), "the user who ran sudo")
    raise ConfigError(
        f"QEMU never runs as root, and there is no user {QEMU_USER!r} for it: create it with "
        f"'{CREATE_USER}' (setup.sh does), or name another user with {USER_ENV}"
    )


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        return None


def _name_of(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@dataclass(frozen=True)
class ProcessPrivileges:
    """What a running process may do, from ``/proc/PID/status``."""

    pid: int
    uids: tuple[int, ...]  # real, effective, saved, filesystem
    gids: tuple[int, ...]
    seccomp: int  # 0 none, 1 strict, 2 filter (QEMU's -sandbox)
    no_new_privs: bool
    effective_caps: int

    @classmethod
    def of(cls, pid: int) -> ProcessPrivileges | None:
        """The privileges of process *pid*; ``None`` if it is gone."""
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return cls(
            pid=pid,
            uids=tuple(int(v) for v in fields["Uid"].split()),
            gids=tuple(int(v) for v in fields["Gid"].split()),
            seccomp=int(fields["Seccomp"]),
            no_new_privs=fields["NoNewPrivs"].strip() == "1",
            effective_caps=int(fields["CapEff"], 16),
        )

    def problems(self) -> list[str]:
        """What makes this process more privileged than a sandboxed QEMU may be."""
        found = []
        if 0 in self.uids or 0 in self.gids:
            found.append(f"runs as root (uids {self.uids}, gids {self.gids})")
        if self.seccomp != 2:
            found.append(f"has no seccomp filter (Seccomp: {self.seccomp})")
        if not self.no_new_privs:
            found.append("may gain privileges (NoNewPrivs: 0)")
        if self.effective_caps:
            found.append(f"has capabilities (CapEff: {self.effective_caps:x})")
        return found


def file_arg(fd: int) -> str:
    """The path by which QEMU opens the file it inherited as *fd*: ``/dev/fd/N`` reopens
    that very file without looking up its path, so directories QEMU's user may not enter
    (``/root``, a 0700 ``tmp_path``) are no obstacle; the file itself must be readable."""
    return f"/dev/fd/{fd}"


def check_readable(identity: QemuIdentity, path: Path, what: str, write: bool = False) -> None:
    """Refuse a file QEMU's user could not open even as an inherited descriptor.

    Raises:
        ConfigError: its permission bits deny *identity*.
    """
    mode = os.R_OK | (os.W_OK if write else 0) | (os.X_OK if path.is_dir() else 0)
    if identity.may(path, mode):
        return
    need = ("read, write" if write else "read") + (" and enter" if path.is_dir() else "")
    who = identity.name or str(identity.uid)
    raise ConfigError(
        f"{what} {str(path)!r} is mode {stat.filemode(path.stat().st_mode)}: QEMU runs as {who} "
        f"and must {need} it; give it to that user (chown {who}, or setfacl -m u:{who}:rwx; "
        "pytest_netlab.give_to_qemu(path) does the chown)"
    )


def let_qemu_write(path: Path, identity: QemuIdentity) -> None:
    """Let *identity* read and write the file *path*, which stays root's: its group
    becomes QEMU's group and its mode 0660 (mode 0600 when QEMU runs as the running
    user, who owns it already). For a file QEMU must open read-write (a template's RAM
    file): the file's change time then tells whether anyone wrote it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if identity.uid != os.geteuid():
            os.fchown(fd, -1, identity.gid)
            os.fchmod(fd, 0o660)
        else:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def give_to_qemu(path: Path) -> None:
    """Make directory *path* QEMU's own (``chown``), so that a read-write share of it
    can be written by QEMU; nothing to do when the tests run as an ordinary user (QEMU
    is that user then).

    Raises:
        ConfigError: no unprivileged user for QEMU (see :func:`qemu_identity`).
    """
    identity = qemu_identity()
    if identity.uid != os.geteuid():
        os.chown(path, identity.uid, identity.gid)


def sandbox_problem(qemu: str, identity: QemuIdentity) -> str | None:
    """Why *qemu* cannot start as *identity* in its sandbox; ``None`` if it can (a QEMU
    with no machine starts and quits over QMP on its stdin)."""
    from .owner import die_with_parent

    argv = die_with_parent(
        [qemu, "-sandbox", SANDBOX, "-machine", "none", "-nodefaults", "-no-user-config",
         "-display", "none", "-qmp", "stdio"],
        identity,
    )
    quit_commands = '{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
    try:
        out = subprocess.run(argv, input=quit_commands, capture_output=True, text=True, timeout=20,
                             check=False, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
    return None
