"""QemuMachine's QMP use, against a fake QMP server over a socketpair (no QEMU)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from pytest_netlab import GuestGoneError, QemuError
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


@pytest.fixture
def machine(tmp_path: Path):
    ours, theirs = socket.socketpair()
    seen: list[str] = []
    server = threading.Thread(target=_serve, args=(theirs, seen), daemon=True)
    server.start()
    m = QemuMachine(MachineConfig("fake", Path("/k"), None, ""), tmp_path)
    m._proc = subprocess.Popen(["sleep", "30"])  # stands in for the QEMU process
    m._qmp = QEMUMonitorProtocol(ours, nickname="fake")
    m._qmp.connect()
    yield m, seen, server
    m._proc.kill()
    m._proc.wait()
    with contextlib.suppress(EOFError, OSError, AttributeError):  # None after shutdown()
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
