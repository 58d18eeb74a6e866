"""SSH sessions to guests (paramiko), one connection per guest kept for its life."""

from __future__ import annotations

import base64
import logging
import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import CommandError, CommandTimeout, SSHError

log = logging.getLogger(__name__)


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

    def __init__(self, guest: str, port: int, key: SessionKey, host_key: str) -> None:
        self.guest = guest
        self.port = port
        self._key = key
        self._host_key = host_key
        self._client: paramiko.SSHClient | None = None
        self.history: list[CommandRecord] = []

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
        """Run *command* with the guest's shell; return its status and output.

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

        Raises:
            SSHError: the connection is gone.
            CommandTimeout: the command did not finish within *timeout* seconds.
        """
        if self._client is None or not self.connected:
            raise SSHError(f"{self.guest}: no SSH connection (the guest may have stopped)")
        transport = self._client.get_transport()
        assert transport is not None
        started = time.monotonic()
        record = CommandRecord(command, None, 0.0)
        self.history.append(record)
        try:
            channel = transport.open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
            try:
                if stdin is not None:
                    channel.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
                channel.shutdown_write()
            except OSError:
                pass  # the command ended without reading all its input: its status says why
            stdout, stderr = _drain(channel, started + timeout)
        except (_DrainTimeout, TimeoutError) as exc:
            record.duration = time.monotonic() - started
            out = getattr(exc, "stdout", b"")
            err = getattr(exc, "stderr", b"")
            raise CommandTimeout(
                self.guest, command, timeout, out.decode(errors="replace"),
                err.decode(errors="replace"),
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            record.duration = time.monotonic() - started
            raise SSHError(f"{self.guest}: SSH failed while running {command!r}: {exc}") from exc
        status = channel.recv_exit_status()
        channel.close()
        record.status = status
        record.duration = time.monotonic() - started
        log.debug("%s$ %s -> %d (%.3f s)", self.guest, command, status, record.duration)
        return status, stdout, stderr, record.duration

    def sftp(self) -> paramiko.SFTPClient:
        if self._client is None:
            raise SSHError(f"{self.guest}: no SSH connection")
        return self._client.open_sftp()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _DrainTimeout(Exception):
    def __init__(self, stdout: bytes, stderr: bytes) -> None:
        super().__init__("command timeout")
        self.stdout = stdout
        self.stderr = stderr


def _drain(channel: paramiko.Channel, deadline: float) -> tuple[bytes, bytes]:
    """Read stdout and stderr together (reading one to its end could stall the other)."""
    out = bytearray()
    err = bytearray()
    while True:
        if channel.recv_ready():
            out += channel.recv(65536)
        elif channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        elif channel.eof_received:
            return bytes(out), bytes(err)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _DrainTimeout(bytes(out), bytes(err))
            # the channel is select()-able for stdout and EOF; the short cap catches stderr
            select.select([channel], [], [], min(remaining, 0.01))


def public_key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def decode_blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])
