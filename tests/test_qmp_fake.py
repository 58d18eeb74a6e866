"""QemuMachine's QMP use, against a fake QMP server over a socketpair (no QEMU)."""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from pytest_netlab import GuestGoneError, QemuError
from pytest_netlab.errors import StateLoadError
from pytest_netlab.qemu import MachineConfig, QemuMachine

USERNET = (
    "Hub -1 (mgmt):\r\n"
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    "  TCP[HOST_FORWARD]  13       127.0.0.1 37617 100.127.255.15    22     0     0\r\n"
    "  TCP[HOST_FORWARD]  14       127.0.0.1 41005 100.127.255.15    80     0     0\r\n"
)


def _requests(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """The JSON objects the client sends (QMP has no line framing)."""
    decoder = json.JSONDecoder()
    buffer = ""
    while data := sock.recv(65536):
        buffer += data.decode()
        while buffer.strip():
            try:
                obj, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break
            buffer = buffer.lstrip()[end:]
            yield obj


def _serve(sock: socket.socket, seen: list[str]) -> None:
    """Answer like QEMU: greeting, then one reply per command; none after ``quit``.

    Requests after ``quit`` are still recorded (a QEMU that is exiting reads but never answers).
    """
    greeting = {
        "QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                "capabilities": []}
    }
    sock.sendall(json.dumps(greeting).encode() + b"\n")
    for request in _requests(sock):
        seen.append(request["execute"])
        if "quit" in seen[:-1]:
            continue
        if request["execute"] == "human-monitor-command":
            line = request["arguments"]["command-line"]
            if line.startswith("hostfwd_remove"):  # as QEMU 7.2 answers a rule it lacks
                reply: dict[str, object] = {
                    "return": f"host forwarding rule for {line.split()[-1]} not found\r\n"
                }
            else:
                reply = {"return": USERNET}
        elif request["execute"] == "query-status":
            reply = {"error": {"class": "GenericError", "desc": "fake failure"}}
        else:
            reply = {"return": {}}
        reply["id"] = request.get("id")
        sock.sendall(json.dumps(reply).encode() + b"\n")
    sock.close()


def _connect_fake(
    m: QemuMachine, serve: Callable[[socket.socket], None], qemu: list[str]
) -> threading.Thread:
    """Give *m* a process *qemu* that stands in for QEMU and a QMP connection to *serve*,
    which answers in the thread returned."""
    ours, theirs = socket.socketpair()
    server = threading.Thread(target=serve, args=(theirs,), daemon=True)
    server.start()
    m._proc = subprocess.Popen(qemu)
    m._qmp = QEMUMonitorProtocol(ours, nickname=m.config.name)
    m._qmp.connect()
    return server


@pytest.fixture
def machine(tmp_path: Path):
    seen: list[str] = []
    m = QemuMachine(MachineConfig("fake", Path("/k"), None, ""), tmp_path)
    server = _connect_fake(m, lambda sock: _serve(sock, seen), ["sleep", "30"])
    yield m, seen, server
    m._proc.kill()
    m._proc.wait()
    with contextlib.suppress(EOFError, OSError):
        if m._qmp is not None:  # None once shutdown() released it
            m._qmp.close()  # the fake may have hung up after "quit", as QEMU does


def test_forwarded_ports_are_read_from_info_usernet(machine):
    m, seen, _ = machine
    assert m.host_forwards() == {22: 37617, 80: 41005}
    assert seen == ["qmp_capabilities", "human-monitor-command"]


def test_a_refused_forward_removal_says_what_qemu_answered(machine):
    m, _, _ = machine
    with pytest.raises(
        QemuError, match=r"^fake: removing the forward of host port 41005: host forwarding rule "
        r"for tcp:127\.0\.0\.1:41005 not found$"
    ):
        m.remove_host_forward(41005)


def test_a_qmp_error_names_the_command(machine):
    m, _, _ = machine
    with pytest.raises(QemuError, match=r"fake: QMP query-status .* failed: fake failure"):
        m.qmp("query-status")


def test_qmp_on_a_dead_process_fails_fast_with_the_console_log(machine):
    m, _, _ = machine
    m._proc.kill()
    m._proc.wait()
    with pytest.raises(GuestGoneError, match="QEMU is not running"):
        m.qmp("query-status")


def test_quit_is_asked_once_over_a_labs_close(machine):
    m, seen, server = machine
    # Lab.close(): every guest is asked to quit first, then each is shut down
    m.request_quit()
    m.shutdown(timeout=0.5)
    server.join(5)  # shutdown closed QMP: the fake has read everything that was sent
    assert not server.is_alive()
    assert seen == ["qmp_capabilities", "quit"]


def _hang_up_on_query(sock: socket.socket) -> None:
    """Like QEMU refusing an incoming state: QMP is negotiated, then the connection
    drops at the next command, before the process has exited."""
    sock.sendall(json.dumps({"QMP": {"version": {}, "capabilities": []}}).encode() + b"\n")
    for request in _requests(sock):
        if request["execute"] != "qmp_capabilities":
            break
        sock.sendall(json.dumps({"return": {}, "id": request.get("id")}).encode() + b"\n")
    sock.close()


@contextlib.contextmanager
def _loading_machine(tmp_path: Path, exit_after: str, qemu_output: str) -> Iterator[QemuMachine]:
    """A machine loading a saved state whose QMP drops; its "QEMU" exits *exit_after*
    (a shell snippet) and printed *qemu_output*."""
    config = MachineConfig("fake", Path("/k"), None, "", incoming=tmp_path / "vm.state")
    m = QemuMachine(config, tmp_path)
    m.qemu_log.write_text(qemu_output)
    _connect_fake(m, _hang_up_on_query, ["sh", "-c", exit_after])
    try:
        yield m
    finally:
        m.shutdown(timeout=0.1)


REFUSED = "qemu-system-x86_64: load of migration failed: Invalid argument\n"


def test_a_refused_state_is_known_when_qmp_drops_before_qemu_has_exited(tmp_path):
    # the order seen in flaky runs: QMP "Disconnected" while the process still runs
    with (
        _loading_machine(tmp_path, "sleep 0.5; exit 1", REFUSED) as m,
        pytest.raises(StateLoadError, match="load of migration failed"),
    ):
        m.finish_incoming(timeout=10)


def test_a_qemu_that_dies_otherwise_while_loading_is_no_refused_state(tmp_path):
    with (
        _loading_machine(tmp_path, "sleep 0.2; exit 1", "qemu: some other failure\n") as m,
        pytest.raises(QemuError, match="QEMU exited; QEMU exit status 1") as caught,
    ):
        m.finish_incoming(timeout=10)
    assert not isinstance(caught.value, StateLoadError)


def test_qmp_failing_on_a_qemu_that_keeps_running_is_a_qmp_error(tmp_path, monkeypatch):
    monkeypatch.setattr("pytest_netlab.qemu.INCOMING_EXIT_GRACE", 0.3)
    with (
        _loading_machine(tmp_path, "exec sleep 30", REFUSED) as m,
        pytest.raises(QemuError, match=r"QMP query-migrate .* failed") as caught,
    ):
        m.finish_incoming(timeout=10)
    assert not isinstance(caught.value, StateLoadError)


def _reset_at_next_command(sock: socket.socket) -> None:
    """Like QEMU at exit: hang up with the client's last command unread, which resets
    the client's side of the connection (ConnectionResetError in qemu.qmp's reader)."""
    sock.sendall(json.dumps({"QMP": {"version": {}, "capabilities": []}}).encode() + b"\n")
    request = json.loads(sock.recv(65536))  # qmp_capabilities
    sock.sendall(json.dumps({"return": {}, "id": request.get("id")}).encode() + b"\n")
    select.select([sock], [], [])
    sock.close()


@contextlib.contextmanager
def _resetting_machine(tmp_path: Path, name: str) -> Iterator[QemuMachine]:
    m = QemuMachine(MachineConfig(name, Path("/k"), None, ""), tmp_path)
    _connect_fake(m, _reset_at_next_command, ["sleep", "30"])
    try:
        yield m
    finally:
        m.shutdown(timeout=0.1)


RESET = "ConnectionResetError: [Errno 104] Connection reset by peer"


def _qmp_records(caplog: pytest.LogCaptureFixture, name: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == f"qemu.qmp.protocol.{name}"]


def test_qemu_hanging_up_after_quit_is_logged_at_debug_only(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="qemu.qmp")
    with _resetting_machine(tmp_path, "quitter") as m:
        m.shutdown(timeout=0.1)
    records = _qmp_records(caplog, "quitter")
    assert (logging.DEBUG, f"Task.Reader: {RESET}") in records
    assert [r for r in records if r[0] > logging.DEBUG] == []


def test_qemu_hanging_up_during_the_test_is_still_logged_as_an_error(tmp_path, caplog):
    with _resetting_machine(tmp_path, "victim") as m, pytest.raises(QemuError):
        m.qmp("query-status")
    assert (logging.ERROR, f"Task.Reader: {RESET}") in _qmp_records(caplog, "victim")
