"""Network namespaces, bridges and TAP devices of one lab, through netlink (pyroute2).

A :class:`LabNamespace` owns one network namespace and everything made inside it. The
TAP devices are not persistent: each is held open by file descriptors that are handed to
QEMU, so a TAP disappears by itself when its QEMU process ends, however it ends.

Two modes, one interface. As root, the namespace is bound under ``/run/netns/<name>``
(``ip netns`` sees it) and sockets and TAPs are made by a short-lived thread that
entered it. As an ordinary user (rootless), a holder process (:mod:`pytest_netlab.nsholder`)
makes a user namespace owning the network namespace, and makes sockets and TAPs there
on request; the namespace is found through the holder's ``/proc/PID/ns/``, and it goes
when the holder and the last QEMU are gone. Either way the plugin then talks netlink
(pyroute2) over a socket made inside, and runs commands inside with ``nsenter``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from socket import socket as Socket
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetlinkError, netns

from . import nsholder, subids
from .constants import NETNS_RUN_DIR
from .errors import CommandError, CommandTimeout, NamespaceError
from .owner import (
    Owner,
    die_with_parent,
    kill_netns_processes,
    namespace_holder,
    owner_environment,
    owners_dir,
    start_ticks,
)
from .privileges import rootless

log = logging.getLogger(__name__)

_T = TypeVar("_T")

CLONE_NEWNET = 0x40000000
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TC_H_ROOT = 0xFFFFFFFF  # the parent of a device's root qdisc

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _in_thread(func: Callable[[], _T], name: str) -> _T:
    """Run *func* in a short-lived thread of its own and return what it returns."""
    result: list[_T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            result.append(func())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def run_in_netns(name: str, func: Callable[[], _T]) -> _T:
    """Run *func* in a short-lived thread that has entered network namespace *name*.

    Sockets and TAP devices that *func* creates belong to that namespace, and stay
    there when used from other threads.
    """

    def body() -> _T:
        _setns(NETNS_RUN_DIR / name)
        return func()

    return _in_thread(body, f"netns-{name}")


# what a probe gives each qdisc kind: the least it accepts
_PROBE_PARAMETERS: dict[str, dict[str, object]] = {
    "tbf": {"rate": "1mbit", "burst": 3028, "latency": "50ms"},
}


def _probe_qdisc(ipr: IPRoute, kind: str) -> bool:
    loopback = int(ipr.link_lookup(ifname="lo")[0])
    try:
        ipr.tc("add", kind, loopback, 0x10000, **_PROBE_PARAMETERS.get(kind, {}))
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.EOPNOTSUPP):  # no such qdisc kind
            return False
        raise
    return True


@functools.cache
def host_has_qdisc(kind: str) -> bool:
    """Whether the host kernel can make a *kind* qdisc (``netem``, ``tbf``), loading its
    module if it has one (as root).

    Tried on the loopback of a network namespace made for the probe alone (by a
    short-lived thread as root, by a holder process rootless), which goes away with it:
    nothing on the host changes and nothing is left to remove.

    Raises:
        NamespaceError: the probe itself failed (no CAP_SYS_ADMIN, say).
    """

    def probe() -> bool:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        with IPRoute() as ipr:
            return _probe_qdisc(ipr, kind)

    def probe_rootless() -> bool:
        with NamespaceHolder.start() as holder, IPRoute(fileno=holder.netlink().detach()) as ipr:
            return _probe_qdisc(ipr, kind)

    try:
        found = probe_rootless() if rootless() else _in_thread(probe, f"qdisc-probe-{kind}")
    except (OSError, NetlinkError) as exc:
        raise NamespaceError(
            f"cannot find out whether the host kernel has the {kind} qdisc: {exc}"
        ) from exc
    log.debug("host kernel %s the %s qdisc", "has" if found else "lacks", kind)
    return found


class NamespaceHolder:
    """The plugin's end of a rootless lab's holder process (:mod:`pytest_netlab.nsholder`).

    Safe to use from several threads; ``close()`` (or leaving a ``with`` block) ends the
    holder, and so does this process's end, however it ends.
    """

    START_TIMEOUT = 30.0  # seconds: a Python start on a loaded machine

    def __init__(self, proc: subprocess.Popen[bytes], control: Socket) -> None:
        self.proc = proc
        self._control = control
        self._lock = threading.Lock()

    @classmethod
    def start(cls) -> NamespaceHolder:
        """Start a holder and wait until its namespaces exist.

        Raises:
            NamespaceError: the user namespace cannot be made (the message says why
                that may be and what to do).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        source = Path(nsholder.__file__).read_text()
        with ours, theirs:
            # its own process group: a Ctrl-C at the terminal is the plugin's to handle
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", source, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=owner_environment(),
                process_group=0,
            )
            theirs.close()
            ours.settimeout(cls.START_TIMEOUT)
            try:
                answer = ours.recv(nsholder.MESSAGE_SIZE).decode(errors="replace")
                if answer == "unshared":
                    ours.send(b"mapped" if map_subordinate_ids(proc.pid) else b"map-self")
                    answer = ours.recv(nsholder.MESSAGE_SIZE).decode(errors="replace")
            except TimeoutError:
                answer = f"error 0 no answer within {cls.START_TIMEOUT:.0f} s"
            ours.settimeout(None)
            if answer != "ready":
                proc.kill()
                proc.wait()
                raise NamespaceError(_holder_failure(answer))
            return cls(proc, ours.dup())

    def _request(self, text: str, count: int) -> list[int]:
        with self._lock:
            self._control.send(text.encode())
            message, fds, _, _ = socket.recv_fds(self._control, nsholder.MESSAGE_SIZE, count)
        answer = message.decode(errors="replace")
        if answer != "ok":
            for fd in fds:
                os.close(fd)
            words = answer.split(" ", 2)
            code = int(words[1]) if len(words) == 3 and words[1].isdigit() else 0
            raise OSError(code, words[2] if len(words) == 3 else answer or "the holder is gone")
        for fd in fds:
            os.set_inheritable(fd, False)
        return fds

    def socket(self, family: int, kind: int, proto: int = 0) -> Socket:
        """A socket made in the holder's network namespace."""
        return socket.socket(fileno=self._request(f"socket {family} {kind} {proto}", 1)[0])

    def netlink(self) -> Socket:
        """A netlink (rtnetlink) socket in the holder's network namespace."""
        return self.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)  # NETLINK_ROUTE

    def tap(self, ifname: str, flags: int, queues: int) -> list[int]:
        """Create TAP *ifname* in the holder's namespace; one fd per queue."""
        return self._request(f"tap {ifname} {flags} {queues}", queues)

    def close(self) -> None:
        self._control.close()  # the holder's end reads its end and exits
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NamespaceHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def map_subordinate_ids(pid: int) -> bool:
    """Map this user as root and the user's subordinate ids as the other users into
    process *pid*'s fresh user namespace (``newuidmap``/``newgidmap``, from Debian's
    ``uidmap``); whether that was done."""
    user = subids.current_user()
    if subids.ids_missing() is not None:
        return False
    uids = subids.ranges(subids.SUBUID, user, os.geteuid())
    gids = subids.ranges(subids.SUBGID, user, os.geteuid())  # keyed by user too
    for tool, me, (start, count) in (
        ("newuidmap", os.geteuid(), uids[0]), ("newgidmap", os.getegid(), gids[0]),
    ):
        done = subprocess.run(
            [tool, str(pid), "0", str(me), "1", "1", str(start), str(min(count, 65535))],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            log.info("%s failed (%s): the rootless lab maps your user alone", tool, done.stderr.strip())
            return False
    return True


def _holder_failure(answer: str) -> str:
    words = answer.split(" ", 2)
    why = words[2] if len(words) == 3 else answer or "it exited at once"
    return (
        f"cannot make a user namespace for a rootless lab ({why}): unprivileged user "
        "namespaces may be off (sysctl user.max_user_namespaces=0, "
        "kernel.unprivileged_userns_clone=0, or AppArmor's "
        "kernel.apparmor_restrict_unprivileged_userns=1); 'pytest-netlab doctor' checks, "
        "or run the tests as root"
    )


@dataclass(frozen=True)
class NamespacePath:
    """A lab's network namespace as other processes reach it: bound under /run/netns
    (made as root), or through the ``/proc/PID/ns/`` of its holder (rootless)."""

    name: str
    holder: int | None = None

    @property
    def net(self) -> Path:
        return Path(f"/proc/{self.holder}/ns/net") if self.holder else NETNS_RUN_DIR / self.name

    def exists(self) -> bool:
        return self.net.exists()

    def capture_problem(self) -> str | None:
        """Why tcpdump cannot run in this namespace, or ``None``: inside a rootless lab
        it changes its user, which needs the user's subordinate ids mapped too (the
        holder's uid map has more than the user's own line)."""
        if self.holder is None:
            return None
        try:
            if len(Path(f"/proc/{self.holder}/uid_map").read_text().splitlines()) > 1:
                return None
        except OSError:
            return None  # the holder is gone: what runs next says so
        missing = subids.ids_missing()
        return (
            "packet capture in a rootless lab needs your subordinate ids mapped in it (tcpdump "
            "changes its user inside): "
            + (missing.message() if missing else "newuidmap refused them: see the log for why")
        )

    def enter(self, argv: Sequence[str]) -> list[str]:
        """*argv* run inside the namespace (root inside, in a rootless lab's user namespace)."""
        if self.holder is None:
            return ["nsenter", f"--net={self.net}", "--", *argv]
        return [
            "nsenter", f"--user=/proc/{self.holder}/ns/user", f"--net={self.net}",
            "--preserve-credentials", "--", *argv,
        ]


def find_namespace(runtime_base: Path, name: str) -> NamespacePath | None:
    """Lab *name*'s namespace as its owner record and /run/netns give it; ``None`` if it
    is not there (or its holder is gone)."""
    holder = namespace_holder(runtime_base, name)
    if holder is not None:
        return NamespacePath(name, holder.pid) if holder.alive() else None
    found = NamespacePath(name)
    return found if found.exists() else None


def _create_netns(name: str) -> None:
    """Create network namespace *name* (a bind mount under /run/netns), all or nothing.

    Not ``pyroute2.netns.create``: that forks a child and waits for its answer only
    ``pyroute2.config.default_communicate_timeout`` (2 s), which a loaded machine
    exceeds (``no response from the child pid``), leaving what the killed child had
    made. Here a short-lived thread of this process unshares its network namespace and
    binds it (``netns.attach``); nothing waits on another process. What a failed
    attempt made (the mount point file) is removed before the error is raised.
    """

    def body() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        netns.attach(name, f"{os.getpid()}/task/{threading.get_native_id()}")

    try:
        _in_thread(body, f"netns-create-{name}")
    except OSError as exc:
        # EEXIST: the mount point is someone else's, made since the caller looked
        if exc.errno != errno.EEXIST and (NETNS_RUN_DIR / name).exists():
            with contextlib.suppress(OSError):
                netns.remove(name)  # unmounts it if bound, and removes the file
        raise


def tap_flags(queues: int) -> int:
    """``TUNSETIFF`` flags of a lab's TAP with *queues* queues."""
    return IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)


def _tun_hint(exc: OSError) -> str:
    if exc.errno not in (errno.EACCES, errno.EPERM) or not rootless():
        return ""
    return (
        " (a rootless lab opens /dev/net/tun as you: it must be mode 0666, as Debian's "
        "udev makes it; 'sudo chmod 0666 /dev/net/tun' (setup.sh does))"
    )


def open_tap(ifname: str, queues: int = 1) -> list[int]:
    """Create TAP *ifname* in the calling thread's namespace; return one fd per queue.

    The device lives as long as one of the returned descriptors is open.
    """
    return nsholder.open_tap(ifname, tap_flags(queues), queues)


class _NetlinkThread:
    """One IPRoute, used from a thread of its own whichever thread calls it.

    pyroute2 (0.9) sets up a socket per calling thread: from a socket made elsewhere
    (``fileno=``) it can make only the first, and from a namespace name it forks a
    child per thread. One thread per lab serializes the lab's netlink requests, which
    are short, and needs one socket.
    """

    def __init__(self, make: Callable[[], IPRoute], name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netlink-{name}")
        try:
            self._ipr = self._pool.submit(make).result()
        except BaseException:
            self._pool.shutdown()
            raise

    def __getattr__(self, attribute: str) -> Callable[..., Any]:
        method = getattr(self._ipr, attribute)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._pool.submit(method, *args, **kwargs).result()

        return call

    def close(self) -> None:
        self._pool.submit(self._ipr.close).result()
        self._pool.shutdown()


@dataclass
class HostCommandResult:
    """What a command run in the lab namespace did."""

    command: str
    status: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.status == 0


class LabNamespace:
    """One network namespace of a lab, and the bridges, TAPs and daemons made in it.

    ``close()`` removes only what this object made, is safe to call twice, and is
    what the lab calls at teardown, however the test ended.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._ipr: Any = None  # an IPRoute behind a _NetlinkThread
        self._holder: NamespaceHolder | None = None
        self._daemons: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._created = False
        self._closed = False
        self.log = log.getChild(name)

    # -- life cycle -------------------------------------------------------------------
    def create(self) -> None:
        """Create the namespace and bring its loopback up.

        Raises:
            NamespaceError: the namespace exists already or cannot be made.
        """
        if (NETNS_RUN_DIR / self.name).exists() or self._owner_record.exists():
            raise NamespaceError(f"network namespace {self.name!r} exists already")
        self._write_owner_record()
        try:
            if rootless():
                self._holder = NamespaceHolder.start()
                self._write_owner_record(holder=self._holder.proc.pid)
            else:
                _create_netns(self.name)
        except (OSError, NetlinkError, NamespaceError) as exc:
            self._owner_record.unlink(missing_ok=True)
            if isinstance(exc, NamespaceError):
                raise
            raise NamespaceError(
                f"cannot create network namespace {self.name!r}: {exc} "
                "(as root; an ordinary user's run makes rootless labs)"
            ) from exc
        self._created = True
        try:
            self._ipr = _NetlinkThread(
                lambda: IPRoute(fileno=self.socket(socket.AF_NETLINK, socket.SOCK_DGRAM).detach()),
                self.name,
            )
            self._ipr.link("set", index=self._index("lo"), state="up")
        except (OSError, NetlinkError) as exc:
            self.close()
            raise NamespaceError(f"cannot set up namespace {self.name!r}: {exc}") from exc

    @property
    def _owner_record(self) -> Path:
        from .session import runtime_base

        return owners_dir(runtime_base()) / self.name

    def _write_owner_record(self, holder: int | None = None) -> None:
        """Say who owns the namespace, before it exists: cleanup removes a namespace
        named like ours only when its record names an owner that is gone. A rootless
        lab's record names its holder too, once it runs (:func:`find_namespace`)."""
        record = self._owner_record
        record.parent.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(Owner.me().tag + "\n")
            if holder is not None:
                ticks = start_ticks(holder)
                handle.write(f"holder {holder}-{ticks}\n")

    @property
    def path(self) -> NamespacePath:
        """The namespace as other processes reach it (``nsenter``)."""
        return NamespacePath(self.name, self._holder.proc.pid if self._holder else None)

    def capture_problem(self) -> str | None:
        """Why tcpdump cannot run in this namespace, or ``None`` (:meth:`NamespacePath.capture_problem`)."""
        return self.path.capture_problem()

    def socket(self, family: int, kind: int, proto: int = 0) -> Socket:
        """A socket made inside the namespace; it stays there, whichever thread uses it."""
        if self._holder is not None:
            return self._holder.socket(family, kind, proto)
        return run_in_netns(self.name, lambda: socket.socket(family, kind, proto))

    def close(self) -> None:
        """Stop the daemons started here, kill what else runs in the namespace (what
        commands left in the background) and remove it with all its links."""
        if self._closed:
            return
        self._closed = True
        for what, proc in reversed(self._daemons):
            _stop_process(proc, what, self.log)
        self._daemons.clear()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._created:
            left = kill_netns_processes(self.path.net, spare=self.path.holder)
            if left:
                self.log.info("killed %d process(es) left in the namespace: %s", len(left), left)
            if self._holder is not None:
                self._holder.close()  # the namespaces go with it (and the last QEMU)
            else:
                self._remove_bound()
            self._owner_record.unlink(missing_ok=True)

    def _remove_bound(self) -> None:
        try:
            netns.remove(self.name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise NamespaceError(f"cannot remove namespace {self.name!r}: {exc}") from exc

    @property
    def created(self) -> bool:
        return self._created and not self._closed

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            raise NamespaceError(f"namespace {self.name!r} is not open")
        return self._ipr

    def _index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise NamespaceError(f"no link {ifname!r} in namespace {self.name!r}")
        return int(found[0])

    # -- links ------------------------------------------------------------------------
    def add_bridge(self, ifname: str) -> int:
        """Create bridge *ifname*, up, STP off; return its index."""
        try:
            self.ipr.link("add", ifname=ifname, kind="bridge", br_stp_state=0)
            index = self._index(ifname)
            self.ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise NamespaceError(
                f"cannot create bridge {ifname!r} in {self.name!r}: {os.strerror(exc.code)}"
            ) from exc
        return index

    def add_tap(self, ifname: str, bridge: str, queues: int = 1, mtu: int | None = None) -> list[int]:
        """Create TAP *ifname* enslaved to *bridge* and up; return its file descriptors."""
        try:
            if self._holder is not None:
                fds = self._holder.tap(ifname, tap_flags(queues), queues)
            else:
                fds = run_in_netns(self.name, lambda: open_tap(ifname, queues))
        except OSError as exc:
            raise NamespaceError(
                f"cannot create TAP {ifname!r} in {self.name!r}: {exc.strerror}{_tun_hint(exc)}"
            ) from exc
        try:
            index = self._index(ifname)
            settings: dict[str, object] = {"master": self._index(bridge), "state": "up"}
            if mtu is not None:
                settings["mtu"] = mtu
            self.ipr.link("set", index=index, **settings)
        except (NetlinkError, NamespaceError) as exc:
            for fd in fds:
                os.close(fd)
            raise NamespaceError(f"cannot attach TAP {ifname!r} to {bridge!r}: {exc}") from exc
        return fds

    def add_address(self, ifname: str, address: str, prefixlen: int) -> None:
        try:
            self.ipr.addr("add", index=self._index(ifname), address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            raise NamespaceError(
                f"cannot add {address}/{prefixlen} to {ifname!r}: {os.strerror(exc.code)}"
            ) from exc

    def set_root_qdisc(self, ifname: str, kind: str, parameters: dict[str, object]) -> None:
        """Make a *kind* qdisc with *parameters* (pyroute2's names) the root qdisc of
        *ifname*, replacing any.

        Raises:
            NamespaceError: the kernel refused it; the message names the device.
        """
        try:
            self.ipr.tc("replace", kind, self._index(ifname), 0x10000, **parameters)
        except NetlinkError as exc:
            raise NamespaceError(
                f"cannot set a {kind} qdisc on {ifname!r} in {self.name!r}: {os.strerror(exc.code)}"
            ) from exc

    def remove_root_qdisc(self, ifname: str) -> None:
        """Remove the root qdisc this lab set on *ifname* (the device's default is back);
        none there is fine.

        Raises:
            NamespaceError: the kernel refused it.
        """
        try:
            self.ipr.tc("del", index=self._index(ifname), parent=TC_H_ROOT)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL):  # no qdisc of ours there
                return
            raise NamespaceError(
                f"cannot remove the qdisc of {ifname!r} in {self.name!r}: {os.strerror(exc.code)}"
            ) from exc

    def root_qdisc(self, ifname: str) -> str | None:
        """The kind of *ifname*'s root qdisc (``tbf``, ``noqueue``...), or None."""
        for qdisc in self.ipr.get_qdiscs(self._index(ifname)):
            if qdisc["parent"] == TC_H_ROOT:
                kind = qdisc.get_attr("TCA_KIND")
                return str(kind) if kind is not None else None
        return None

    def links(self) -> list[str]:
        """Names of the links in the namespace."""
        return [str(link.get("ifname")) for link in self.ipr.get_links()]

    # -- commands ---------------------------------------------------------------------
    def _argv(self, command: str | Sequence[str]) -> list[str]:
        return self.path.enter(["sh", "-c", command] if isinstance(command, str) else command)

    def run(
        self, command: str | Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> HostCommandResult:
        """Run *command* (a shell string or an argv list) inside the namespace.

        Raises:
            CommandError: with ``check=True``, the command exited non-zero.
            CommandTimeout: it did not finish within *timeout* seconds.
        """
        text = command if isinstance(command, str) else shlex.join(command)
        started = time.monotonic()
        # like spawn(): marked with its owner, killed if this thread ends, in a process
        # group of its own (a timeout kills the whole group); what it leaves in the
        # background is killed when the namespace closes
        with subprocess.Popen(
            die_with_parent(self._argv(command)), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=owner_environment(),
            process_group=0,
        ) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                raise CommandTimeout(
                    f"lab namespace {self.name}", text, timeout, _text(stdout), _text(stderr),
                ) from None
        result = HostCommandResult(
            text, proc.returncode, _text(stdout), _text(stderr), time.monotonic() - started,
        )
        self.log.debug("%s -> %d (%.3f s)", text, result.status, result.duration)
        if check and result.status != 0:
            raise CommandError(
                f"lab namespace {self.name}", text, result.status, result.stdout, result.stderr
            )
        return result

    def spawn(self, command: str | Sequence[str], *, log_path: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running *command* (a daemon kept in the foreground) in the namespace.

        It is stopped when the namespace is closed, and killed if this process dies.
        """
        text = command if isinstance(command, str) else shlex.join(command)
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                die_with_parent(self._argv(command)), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=owner_environment(),
            )
        finally:
            if log_path and not isinstance(out, int):
                out.close()
        self._daemons.append((text, proc))
        return proc


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def _stop_process(
    proc: subprocess.Popen[bytes], what: str, logger: logging.Logger, grace: float = 2.0
) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop on SIGTERM within %.1f s; killing it", what, grace)
            proc.kill()
            proc.wait()


def namespace_exists(name: str) -> bool:
    """Whether lab *name*'s namespace is there: bound under /run/netns, or held by a
    live holder (a rootless lab)."""
    from .session import runtime_base

    return find_namespace(runtime_base(), name) is not None
