"""SSH sessions to guests (paramiko), one connection per guest kept for its life."""

from __future__ import annotations

import contextlib
import logging
import secrets
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import CommandError, CommandTimeout, SSHError, TransferError
from .untrusted import DEFAULT_OUTPUT_LIMIT, CappedOutput

log = logging.getLogger(__name__)


_CHUNK = 32768
DEFAULT_GET_LIMIT = 1024**3  # bytes vm.get() copies at most unless given max_bytes=


def _check_deadline(deadline: float, timeout: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"not done within {timeout:g} s")


def _copy_capped(
    source: paramiko.SFTPFile, local: Path, deadline: float, timeout: float, max_bytes: int
) -> None:
    """Copy *source* to a new *local* file, within *deadline* and *max_bytes*; on any
    failure *local* is removed."""
    copied = 0
    channel = source.sftp.get_channel()
    try:
        with local.open("wb") as target:
            while True:
                if channel is not None:  # no read may wait past the deadline
                    channel.settimeout(max(deadline - time.monotonic(), 0.05))
                chunk = source.read(_CHUNK)
                if not chunk:
                    break
                _check_deadline(deadline, timeout)
                copied += len(chunk)
                if copied > max_bytes:
                    raise _TooLarge(max_bytes)
                target.write(chunk)
    except BaseException:
        local.unlink(missing_ok=True)
        raise


class _TooLarge(Exception):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            f"more than max_bytes={max_bytes} bytes: give a larger max_bytes= to copy more"
        )


@dataclass(frozen=True)
class SessionKey:
    """An Ed25519 key pair made for one test session; guests accept its public half."""

    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA..."

    @property
    def keytype(self) -> str:
        return self.public_line.split()[0]

    @property
    def blob(self) -> str:
        return self.public_line.split()[1]

    def load(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key_file(str(self.private_path))

    @classmethod
    def generate(cls, directory: Path) -> SessionKey:
        """Write a new key pair into *directory* (which should be private, mode 0700)."""
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
        path = directory / "id_ed25519"
        path.touch(mode=0o600)
        path.write_bytes(private)
        (directory / "id_ed25519.pub").write_text(public + " pytest-netlab\n")
        return cls(path, public)


@dataclass
class CommandResult:
    """What a command run in a guest did."""

    command: str
    status: int
    stdout: str
    stderr: str
    duration: float
    guest: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0

    def __bool__(self) -> bool:
        return self.ok

    def check(self) -> CommandResult:
        """Raise :class:`CommandError` unless the command exited 0; else return self."""
        if not self.ok:
            raise CommandError(self.guest, self.command, self.status, self.stdout, self.stderr)
        return self


@dataclass
class CommandRecord:
    """One entry of a guest's command history (what the test ran, in order)."""

    command: str
    status: int | None
    duration: float
    started: float = field(default_factory=time.time)


class _PinnedHostKey(paramiko.MissingHostKeyPolicy):
    """Accept exactly the host key the guest printed on its console at boot."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        offered = f"{key.get_name()} {key.get_base64()}"
        if offered != self.expected:
            raise SSHError(
                f"{hostname}: host key {offered[:60]}... does not match the key the guest "
                f"printed at boot ({self.expected[:60]}...)"
            )


class SSHSession:
    """One SSH connection to a guest through its forwarded port on 127.0.0.1."""

    def __init__(
        self, guest: str, port: int, key: SessionKey, host_key: str, *,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> None:
        self.guest = guest
        self.port = port
        self.output_limit = output_limit  # bytes kept of each stream of a command
        self._key = key
        self._host_key = host_key
        self._client: paramiko.SSHClient | None = None
        self.history: list[CommandRecord] = []
        self._idle: list[_Shell] = []  # shells waiting for their next command
        self._lock = threading.Lock()
        self._sftp: paramiko.SFTPClient | None = None  # opened at the first file copy
        self._sftp_lock = threading.Lock()  # one copy at a time on it

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and authenticate.

        Raises:
            SSHError: no connection, a wrong host key, or a refused key.
        """
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_PinnedHostKey(self._host_key))
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.connect(
                "127.0.0.1", port=self.port, username="root", pkey=self._key.load(),
                sock=sock, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                allow_agent=False, look_for_keys=False,
            )
        except SSHError:
            client.close()
            raise
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            raise SSHError(
                f"{self.guest}: SSH to 127.0.0.1:{self.port} failed: {exc}"
            ) from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(0)
        self._client = client

    @property
    def connected(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def run(self, command: str, *, timeout: float = 60.0, stdin: str | bytes | None = None) -> CommandResult:
        """Run *command* with the guest's shell; return its status and output. Of each
        stream, at most ``output_limit`` bytes are kept (its first and last half, with a
        ``[... N bytes truncated]`` line between them).

        Raises:
            SSHError: the connection is gone.
            CommandTimeout: the command did not finish within *timeout* seconds.
        """
        status, stdout, stderr, duration = self.run_bytes(command, timeout=timeout, stdin=stdin)
        return CommandResult(
            command, status, stdout.decode(errors="replace"), stderr.decode(errors="replace"),
            duration, self.guest,
        )

    def run_bytes(
        self, command: str, *, timeout: float = 60.0, stdin: str | bytes | None = None
    ) -> tuple[int, bytes, bytes, float]:
        """Like :meth:`run`, with the output as bytes (for file transfers):
        ``(status, stdout, stderr, duration)``.

        A command without *stdin* runs in a shell kept open on the connection (see
        :class:`_Shell`); one with *stdin* gets a channel of its own, as ``ssh host
        command < file`` would.

        Raises:
            SSHError: the connection is gone.
            CommandTimeout: the command did not finish within *timeout* seconds.
        """
        transport = self._transport()
        started = time.monotonic()
        record = CommandRecord(command, None, 0.0)
        self.history.append(record)
        deadline = started + timeout
        try:
            out, err = CappedOutput(self.output_limit), CappedOutput(self.output_limit)
            if stdin is None:
                status, stdout, stderr = self._run_in_shell(transport, command, deadline, out, err)
            else:
                status, stdout, stderr = _run_on_channel(
                    transport, command, stdin.encode() if isinstance(stdin, str) else stdin, deadline,
                    out=out, err=err,
                )
        except _DrainTimeout as exc:
            record.duration = time.monotonic() - started
            raise CommandTimeout(
                self.guest, command, timeout, exc.stdout.decode(errors="replace"),
                exc.stderr.decode(errors="replace"),
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            record.duration = time.monotonic() - started
            raise SSHError(f"{self.guest}: SSH failed while running {command!r}: {exc}") from exc
        record.status = status
        record.duration = time.monotonic() - started
        log.debug("%s$ %s -> %d (%.3f s)", self.guest, command, status, record.duration)
        return status, stdout, stderr, record.duration

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            raise SSHError(f"{self.guest}: no SSH connection (the guest may have stopped)")
        return transport

    def _run_in_shell(
        self, transport: paramiko.Transport, command: str, deadline: float,
        out: CappedOutput, err: CappedOutput,
    ) -> tuple[int, bytes, bytes]:
        # one shell per command in flight: commands from several threads run side by side
        with self._lock:
            shell = self._idle.pop() if self._idle else None
        if shell is None:
            shell = _Shell(transport, deadline)
        try:
            result = shell.run(command, deadline, out, err)
        except BaseException:
            shell.close()  # a timed-out or broken shell is not reused
            raise
        if shell.alive:
            with self._lock:
                if self._client is not None:
                    self._idle.append(shell)
                    return result
        shell.close()
        return result

    # -- files (SFTP) -------------------------------------------------------------------
    def _sftp_client(self, timeout: float) -> paramiko.SFTPClient:
        """The connection's SFTP session, opened on first use (call with _sftp_lock held)."""
        current = self._sftp.get_channel() if self._sftp is not None else None
        if self._sftp is None or current is None or current.closed:
            transport = self._transport()
            try:
                channel = transport.open_session(timeout=timeout)
                channel.invoke_subsystem("sftp")
                self._sftp = paramiko.SFTPClient(channel)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise SSHError(
                    f"{self.guest}: no SFTP session ({exc or type(exc).__name__}): the guest image "
                    "needs /usr/lib/sftp-server; rebuild it with `pytest-netlab image build --rebuild`"
                ) from exc
        sftp_channel = self._sftp.get_channel()
        if sftp_channel is not None:
            sftp_channel.settimeout(timeout)
        return self._sftp

    def _drop_sftp(self) -> None:
        # after a timeout, answers to requests in flight may still come: start afresh
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None

    def put_file(self, local: Path, remote: str, *, mode: int | None = None, timeout: float = 60.0) -> None:
        """Copy the local file *local* to *remote* in the guest over SFTP, creating or
        truncating it; with *mode*, the file gets that mode before any byte is written.

        Raises:
            TransferError: *local* cannot be read, or the guest cannot write *remote*
                (e.g. its directory does not exist); the message names the path.
            SSHError: the connection is gone, or the guest has no SFTP server.
        """
        operation = f"put {local} -> {remote}"
        try:
            source = local.open("rb")
        except OSError as exc:
            raise TransferError(self.guest, operation, str(local), _reason(exc)) from exc
        deadline = time.monotonic() + timeout
        with source, self._transfer(operation, remote, timeout) as sftp, sftp.open(remote, "wb") as target:
            if mode is not None:
                target.chmod(mode)
            target.set_pipelined(True)  # don't wait for each write's answer
            while chunk := source.read(_CHUNK):
                _check_deadline(deadline, timeout)
                target.write(chunk)

    def get_file(
        self, remote: str, local: Path, *, timeout: float = 60.0, max_bytes: int = DEFAULT_GET_LIMIT
    ) -> None:
        """Copy the guest's file *remote* to *local* (a file path, created or replaced)
        over SFTP, all of it within *timeout* seconds and at most *max_bytes* bytes
        (whatever size the guest reports). *local* is opened only once *remote* is open
        for reading; a copy that fails leaves no *local* file.

        Raises:
            TransferError: the guest cannot read *remote* (missing, a directory, no
                permission), it has more than *max_bytes* bytes, the copy took longer
                than *timeout*, or *local* cannot be written (e.g. its directory does
                not exist); the message names the path.
            SSHError: the connection is gone, or the guest has no SFTP server.
        """
        operation = f"get {remote} -> {local}"
        if not local.parent.is_dir():
            raise TransferError(self.guest, operation, str(local.parent), "no such local directory")
        deadline = time.monotonic() + timeout
        with self._transfer(operation, remote, timeout) as sftp:
            source = sftp.open(remote, "rb")
            try:
                attributes = source.stat()
            except OSError:
                source.close()
                raise
            if stat.S_ISDIR(attributes.st_mode or 0):
                # nothing asked for yet: the session stays (dropping it for this made the
                # next copy open a new one, which the guest's dropbear may refuse)
                source.close()
                raise TransferError(self.guest, operation, remote, "is a directory")
            try:
                # ask for the blocks up front, as paramiko's own get() does, but never for
                # more than may be copied: the size is the guest's word
                source.prefetch(min(attributes.st_size or 0, max_bytes + 1))
                _copy_capped(source, local, deadline, timeout, max_bytes)
            except OSError as exc:
                self._drop_sftp()  # closing the file would wait for every block asked for
                if exc.filename is None:  # not the local side's error
                    raise
                raise TransferError(self.guest, operation, str(local), _reason(exc)) from exc
            except BaseException:
                self._drop_sftp()
                raise
            source.close()

    @contextlib.contextmanager
    def _transfer(self, operation: str, remote: str, timeout: float) -> Iterator[paramiko.SFTPClient]:
        """Hold the SFTP session for one copy; turn its errors into :class:`TransferError`
        naming *remote*, and record the copy in the history like a command."""
        started = time.monotonic()
        record = CommandRecord(f"sftp {operation}", None, 0.0)
        self.history.append(record)
        with self._sftp_lock:
            try:
                yield self._sftp_client(timeout)
                record.status = 0
            except TransferError:
                record.status = 1
                raise
            except _TooLarge as exc:
                record.status = 1
                self._drop_sftp()  # prefetched answers may still come
                raise TransferError(self.guest, operation, remote, str(exc)) from exc
            except TimeoutError as exc:
                record.status = 1
                self._drop_sftp()
                raise TransferError(self.guest, operation, remote, f"not done within {timeout:g} s") from exc
            except OSError as exc:  # paramiko's answer to an SFTP status: errno and text
                record.status = 1
                raise TransferError(self.guest, operation, remote, _reason(exc)) from exc
            except (EOFError, paramiko.SSHException) as exc:
                record.status = 1
                self._drop_sftp()
                raise SSHError(f"{self.guest}: SSH failed during {operation}: {exc}") from exc
            finally:
                record.duration = time.monotonic() - started
                log.debug("%s: %s -> %s (%.3f s)", self.guest, record.command, record.status, record.duration)

    def close(self) -> None:
        with self._lock:
            shells, self._idle = self._idle, []
        for shell in shells:
            shell.close()
        # not under _sftp_lock: closing the channel is what ends a copy that hangs
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            sftp.close()
        if self._client is not None:
            self._client.close()
            self._client = None


class _DrainTimeout(Exception):
    def __init__(self, stdout: bytes, stderr: bytes) -> None:
        super().__init__("command timeout")
        self.stdout = stdout
        self.stderr = stderr


def _wait_readable(channel: paramiko.Channel, deadline: float, out: CappedOutput, err: CappedOutput) -> None:
    """Wait until *channel* may have data; past *deadline*, give up with the output so far."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _DrainTimeout(out.value(), err.value())
    # the channel is select()-able for stdout and EOF; the short cap catches stderr
    select.select([channel], [], [], min(remaining, 0.005))


def _run_on_channel(
    transport: paramiko.Transport, command: str, stdin: bytes, deadline: float, *,
    out: CappedOutput, err: CappedOutput,
) -> tuple[int, bytes, bytes]:
    """Run *command* on a channel of its own, feeding it *stdin*."""
    channel = transport.open_session(timeout=max(deadline - time.monotonic(), 0.1))
    try:
        channel.exec_command(command)
        try:
            channel.sendall(stdin)
            channel.shutdown_write()
        except OSError:
            pass  # the command ended without reading all its input: its status says why
        while True:
            if channel.recv_ready():
                out.append(channel.recv(65536))
            elif channel.recv_stderr_ready():
                err.append(channel.recv_stderr(65536))
            elif channel.eof_received:
                return channel.recv_exit_status(), out.value(), err.value()
            else:
                _wait_readable(channel, deadline, out, err)
    finally:
        channel.close()


class _EndMark:
    """Finds the line that ends a command's output on one stream (``\\n<token> `` and
    the status on stdout, ``\\n<token>\\n`` on stderr) as chunks arrive: each chunk is
    searched with the few bytes before it, so a mark split between chunks is found and
    the output itself may be capped."""

    def __init__(self, mark: bytes, *, status: bool = False) -> None:
        self.mark = mark
        self.at = -1  # stream position where the mark starts
        self.status: int | None = None
        self._wants_status = status
        self._window = b""

    def scan(self, stream: CappedOutput, data: bytes) -> None:
        """Add *data* to *stream* and look for the mark; once it was found, what comes
        after (a background process's output) is dropped."""
        if self.status is not None or (self.at >= 0 and not self._wants_status):
            return
        base = stream.total - len(self._window)  # stream position of window[0]
        stream.append(data)
        window = self._window + data
        self._window = window[-(len(self.mark) + 24):]
        found = window.find(self.mark)
        if found < 0:
            return
        self.at = base + found
        if self._wants_status:
            newline = window.find(b"\n", found + len(self.mark))
            if newline < 0:
                self.at = -1  # the status line is not complete yet: look again
                return
            digits = window[found + len(self.mark):newline]
            self.status = int(digits) if digits.isdigit() else -1


class _Shell:
    """A ``/bin/sh`` kept running on one SSH channel, which runs commands one at a time.

    Under TCG every new SSH channel costs the guest a fork and an exec of the shell,
    tens of milliseconds; a command typed into a shell that is already running costs
    one fork. Each command runs as ``( eval 'COMMAND' ) </dev/null`` (the subshell keeps
    ``cd``, ``exit``, ``set -e`` and variables to itself, as ``sh -c`` would), then the
    shell writes a line with a fresh random token and the exit status to stdout, and
    the token to stderr: where they appear, the command's output ends. The token is new
    for every command, so no output can fake it.
    """

    def __init__(self, transport: paramiko.Transport, deadline: float) -> None:
        self.channel = transport.open_session(timeout=max(deadline - time.monotonic(), 0.1))
        self.alive = True
        try:
            self.channel.exec_command("exec /bin/sh")
        except BaseException:
            self.close()
            raise

    def run(
        self, command: str, deadline: float, out: CappedOutput, err: CappedOutput
    ) -> tuple[int, bytes, bytes]:
        channel = self.channel
        self._discard_strays(deadline)
        token = secrets.token_hex(12).encode()
        channel.sendall(
            b"__netlab_c=" + shlex.quote(command).encode() + b"\n"
            b"( eval \"$__netlab_c\" ) </dev/null; __netlab_s=$?\n"
            b"printf '\\n%s\\n' " + token + b" >&2; printf '\\n%s %d\\n' " + token + b" $__netlab_s\n"
        )
        # the marks are looked for in what just came, not in the whole (capped) output
        out_end = _EndMark(b"\n" + token + b" ", status=True)
        err_end = _EndMark(b"\n" + token + b"\n")
        while out_end.status is None or err_end.at < 0:
            if channel.recv_ready():
                out_end.scan(out, channel.recv(65536))
            elif channel.recv_stderr_ready():
                err_end.scan(err, channel.recv_stderr(65536))
            elif channel.eof_received or channel.closed:
                # the shell itself ended (the command killed it, or the guest powered off)
                self.alive = False
                code = channel.recv_exit_status() if channel.exit_status_ready() else -1
                return (
                    out_end.status if out_end.status is not None else code,
                    out.value(out_end.at if out_end.at >= 0 else None),
                    err.value(err_end.at if err_end.at >= 0 else None),
                )
            else:
                _wait_readable(channel, deadline, out, err)
        return out_end.status, out.value(out_end.at), err.value(err_end.at)

    def _discard_strays(self, deadline: float) -> None:
        """Drop what background processes of earlier commands wrote since (for as long
        as the command may take: an endless writer must not hold the next command)."""
        while self.channel.recv_ready() and time.monotonic() < deadline:
            log.debug("dropped output of a background process: %r", self.channel.recv(65536)[:200])
        while self.channel.recv_stderr_ready() and time.monotonic() < deadline:
            log.debug("dropped stderr of a background process: %r", self.channel.recv_stderr(65536)[:200])

    def close(self) -> None:
        self.alive = False
        self.channel.close()


def _reason(exc: OSError) -> str:
    """What an OSError says without its own repetition of the path."""
    return exc.strerror or str(exc) or type(exc).__name__

