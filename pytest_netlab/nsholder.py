"""The holder of a rootless lab's namespaces: a small process that owns them.

An ordinary user cannot make a network namespace, but can make a user namespace and a
network namespace owned by it, with one ``unshare()``; the process that does so is root
inside (its uid mapped to 0) and may make bridges and TAPs there. The plugin's own
process has threads, which ``unshare(CLONE_NEWUSER)`` forbids, and cannot enter a
network namespace without CAP_SYS_ADMIN in its own user namespace. So this process makes
the namespaces and stays in them, and makes there, on request, what the plugin needs:
sockets (netlink, for pyroute2; TCP/UDP, for tests) and TAP devices, handed back over a
Unix socket as file descriptors (``SCM_RIGHTS``). A socket keeps the namespace it was
made in; the plugin, as the user who owns the user namespace, has every capability
there and may use them. Commands run inside with ``nsenter --user --net
--preserve-credentials`` (:func:`pytest_netlab.netns.enter_argv`).

Started as ``python3 -I -S -c SOURCE FD`` (this file's text; standard library only):
FD is its end of a ``SOCK_SEQPACKET`` pair. It says ``unshared`` once the namespaces are
made (or ``error ERRNO TEXT`` and exits); the plugin then maps the user's ids into the
user namespace with ``newuidmap``/``newgidmap`` (the user as root, and the user's
subordinate ids as the other users, so that programs that change their user, such as
tcpdump, work inside) and answers ``mapped``, or, where that cannot be done, answers
``map-self``: the holder maps the user as root alone, the only mapping a process may
write for itself. The holder says ``ready``, then answers each request:

- ``socket FAMILY TYPE PROTO`` -> ``ok`` with the socket's fd
- ``tap NAME FLAGS QUEUES`` -> ``ok`` with one fd per queue

or ``error ERRNO TEXT``. It exits when the plugin's end closes (however the plugin
ended), and the namespaces go when the last process or socket in them is gone.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
MESSAGE_SIZE = 256


def _error(exc: OSError, what: str) -> bytes:
    return f"error {exc.errno or 0} {what}: {exc.strerror or exc}".encode()


def _unshare() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _map_self(uid: int, gid: int) -> None:
    # one line each: the only mapping an unprivileged process may write for itself
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"0 {gid} 1")


def open_tap(name: str, flags: int, queues: int) -> list[int]:
    """Create TAP *name* (``TUNSETIFF`` *flags*) in this thread's network namespace; one
    fd per queue. The device lives as long as one of them is open."""
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _answer(words: list[str]) -> list[int]:
    """The fds that request *words* asks for (raises OSError or ValueError)."""
    if words[0] == "socket" and len(words) == 4:
        sock = socket.socket(int(words[1]), int(words[2]), int(words[3]))
        return [sock.detach()]
    if words[0] == "tap" and len(words) == 4:
        return open_tap(words[1], int(words[2]), int(words[3]))
    raise ValueError(f"unknown request {' '.join(words)!r}")


def _serve(control: socket.socket) -> None:
    while True:
        request = control.recv(MESSAGE_SIZE)
        if not request:
            return  # the plugin's end is closed
        words = request.decode(errors="replace").split()
        try:
            fds = _answer(words)
        except OSError as exc:
            control.send(_error(exc, words[0]))
            continue
        except ValueError as exc:
            control.send(f"error 0 {exc}".encode())
            continue
        try:
            socket.send_fds(control, [b"ok"], fds)
        finally:
            for fd in fds:
                os.close(fd)


def main(fd: int) -> None:
    control = socket.socket(fileno=fd)
    uid, gid = os.geteuid(), os.getegid()
    try:
        _unshare()
    except OSError as exc:
        control.send(_error(exc, "unshare(CLONE_NEWUSER|CLONE_NEWNET)"))
        return
    control.send(b"unshared")
    answer = control.recv(MESSAGE_SIZE)
    if answer == b"map-self":
        _map_self(uid, gid)
    elif answer != b"mapped":
        return  # the plugin's end closed
    control.send(b"ready")
    _serve(control)


if __name__ == "__main__":
    main(int(sys.argv[1]))
