"""The exceptions of pytest-netlab.

One root, :class:`NetlabError`. Its subclasses keep apart the two kinds of failure a
network test has: the lab itself could not be built or run (:class:`LabError` and its
children: a guest that would not boot, a namespace that could not be made), and what
the test asked of a guest failed (:class:`CommandError`: a command returned non-zero).
Bad input is :class:`ConfigError`, raised before anything is created.
"""

from __future__ import annotations

from .untrusted import printable


class NetlabError(Exception):
    """Root of every error raised by pytest-netlab.

    Its text is shown on terminals and may quote a guest (a command's output, the
    console): control characters in it are escaped (see :func:`.untrusted.printable`).
    The attributes (``stdout``, ``stderr``...) keep the raw text.
    """

    def __str__(self) -> str:
        return printable(super().__str__())


class ConfigError(NetlabError, ValueError):
    """A value given to the plugin is not acceptable; raised before anything is created."""


class LabError(NetlabError):
    """The lab's infrastructure failed (namespace, link, QEMU, SSH transport)."""


class NamespaceError(LabError):
    """A network namespace, bridge or TAP could not be created or removed."""


class ImageError(LabError):
    """The guest image could not be found or built."""


class AcceleratorError(LabError):
    """The requested accelerator cannot be used on this machine."""


class QemuError(LabError):
    """A QEMU process failed to start or died.

    The message carries the command line, the exit status and the end of QEMU's output.
    """


class StateLoadError(QemuError):
    """A saved guest state could not be loaded into a new QEMU (a damaged file)."""


class BootTimeout(QemuError):
    """A guest did not become ready in time; the message shows the end of its console."""


class GuestGoneError(QemuError):
    """The guest's QEMU process is no longer running (crashed, powered off or killed)."""


class SSHError(LabError):
    """The SSH transport to a guest failed (connect, authentication, host key, timeout)."""


class CommandError(NetlabError):
    """A command run in a guest or in the lab namespace exited non-zero (``check=True``)."""

    def __init__(self, where: str, command: str, status: int, stdout: str, stderr: str) -> None:
        self.where = where
        self.command = command
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{where}: command {command!r} exited with status {status}\n"
            f"--- stdout ---\n{_tail(stdout)}\n--- stderr ---\n{_tail(stderr)}"
        )


class CommandTimeout(CommandError):
    """A command did not finish within its timeout."""

    def __init__(self, where: str, command: str, timeout: float, stdout: str, stderr: str) -> None:
        self.timeout = timeout
        super().__init__(where, command, -1, stdout, stderr)
        self.args = (
            f"{where}: command {command!r} did not finish within {timeout:g} s\n"
            f"--- stdout so far ---\n{_tail(stdout)}\n--- stderr so far ---\n{_tail(stderr)}",
        )


class TransferError(CommandError):
    """Copying a file to or from a guest (``vm.put``, ``vm.get``) failed; the message
    names the path that failed and why."""

    def __init__(self, where: str, operation: str, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(where, operation, -1, "", reason)
        self.args = (f"{where}: {operation}: {path}: {reason}",)


def _tail(text: str, lines: int = 40) -> str:
    parts = text.rstrip("\n").splitlines()
    if len(parts) <= lines:
        return "\n".join(parts) if parts else "(empty)"
    return "\n".join([f"... ({len(parts) - lines} lines cut)", *parts[-lines:]])


class WaitTimeout(NetlabError, AssertionError):
    """A condition awaited with ``wait_until`` (or ``wait_until_fails``) did not come
    true in time. It is an ``AssertionError`` too: the test's expectation failed."""

    def __init__(self, what: str, timeout: float, attempts: int, last: str) -> None:
        self.what = what
        self.timeout = timeout
        self.attempts = attempts
        self.last = last
        super().__init__(
            f"{what}: not reached within {timeout:g} s ({attempts} attempts); "
            f"the last attempt gave:\n{_tail(last)}"
        )
