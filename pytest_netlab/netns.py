"""Network namespaces, bridges and TAP devices of one lab, through netlink (pyroute2).

A :class:`LabNamespace` owns one network namespace and everything made inside it. The
TAP devices are not persistent: each is held open by file descriptors that are handed to
QEMU, so a TAP disappears by itself when its QEMU process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import logging
import os
import shlex
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute, NetlinkError, netns

from .constants import NETNS_RUN_DIR
from .errors import CommandError, CommandTimeout, NamespaceError
from .owner import (
    Owner,
    die_with_parent,
    kill_netns_processes,
    owner_environment,
    owners_dir,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
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


@functools.cache
def host_has_qdisc(kind: str) -> bool:
    """Whether the host kernel can make a *kind* qdisc (``netem``, ``tbf``), loading its
    module if it has one.

    Tried on the loopback of a network namespace that a short-lived thread makes for
    itself (``unshare``), which goes away with the thread: nothing on the host changes
    and nothing is left to remove.

    Raises:
        NamespaceError: the probe itself failed (no CAP_SYS_ADMIN, say).
    """

    def probe() -> bool:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        with IPRoute() as ipr:
            loopback = int(ipr.link_lookup(ifname="lo")[0])
            try:
                ipr.tc("add", kind, loopback, 0x10000, **_PROBE_PARAMETERS.get(kind, {}))
            except NetlinkError as exc:
                if exc.code in (errno.ENOENT, errno.EOPNOTSUPP):  # no such qdisc kind
                    return False
                raise
        return True

    try:
        found = _in_thread(probe, f"qdisc-probe-{kind}")
    except (OSError, NetlinkError) as exc:
        raise NamespaceError(
            f"cannot find out whether the host kernel has the {kind} qdisc: {exc}"
        ) from exc
    log.debug("host kernel %s the %s qdisc", "has" if found else "lacks", kind)
    return found


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


def open_tap(ifname: str, queues: int = 1) -> list[int]:
    """Create TAP *ifname* in the calling thread's namespace; return one fd per queue.

    The device lives as long as one of the returned descriptors is open.
    """
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


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
        self._ipr: IPRoute | None = None
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
        if (NETNS_RUN_DIR / self.name).exists():
            raise NamespaceError(f"network namespace {self.name!r} exists already")
        self._write_owner_record()
        try:
            _create_netns(self.name)
        except (OSError, NetlinkError) as exc:
            self._owner_record.unlink(missing_ok=True)
            raise NamespaceError(
                f"cannot create network namespace {self.name!r}: {exc} "
                "(pytest-netlab needs root or CAP_SYS_ADMIN and CAP_NET_ADMIN)"
            ) from exc
        self._created = True
        try:
            self._ipr = IPRoute(netns=self.name)
            self._ipr.link("set", index=self._index("lo"), state="up")
        except (OSError, NetlinkError) as exc:
            self.close()
            raise NamespaceError(f"cannot set up namespace {self.name!r}: {exc}") from exc

    @property
    def _owner_record(self) -> Path:
        from .session import runtime_base

        return owners_dir(runtime_base()) / self.name

    def _write_owner_record(self) -> None:
        """Say who owns the namespace, before it exists: cleanup removes a namespace
        named like ours only when its record names an owner that is gone."""
        record = self._owner_record
        record.parent.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(Owner.me().tag + "\n")

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
            left = kill_netns_processes(NETNS_RUN_DIR / self.name)
            if left:
                self.log.info("killed %d process(es) left in the namespace: %s", len(left), left)
            try:
                netns.remove(self.name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise NamespaceError(
                        f"cannot remove namespace {self.name!r}: {exc}"
                    ) from exc
            self._owner_record.unlink(missing_ok=True)

    @property
    def created(self) -> bool:
        return self._created and not self._closed

    @property
    def ipr(self) -> IPRoute:
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
            fds = run_in_netns(self.name, lambda: open_tap(ifname, queues))
        except OSError as exc:
            raise NamespaceError(
                f"cannot create TAP {ifname!r} in {self.name!r}: {exc.strerror}"
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
        args = ["sh", "-c", command] if isinstance(command, str) else list(command)
        return ["nsenter", f"--net={NETNS_RUN_DIR / self.name}", "--", *args]

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
