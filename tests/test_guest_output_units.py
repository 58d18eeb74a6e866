"""Guest output, the pure parts: escaping, byte caps, end marks in a capped stream,
console line splitting, evidence names, malformed frames in a pcap file."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import dpkt
import pytest

from pytest_netlab import CommandError, ConfigError
from pytest_netlab.artifacts import _write, split_sections
from pytest_netlab.cleanup import remove_leftovers
from pytest_netlab.guest_protocol import ConsoleMarks
from pytest_netlab.owner import OWNER_ENV
from pytest_netlab.pcap import read_pcap
from pytest_netlab.qemu import CONSOLE_LINE_MAX, MachineConfig, QemuMachine, _split_lines
from pytest_netlab.ssh import _EndMark
from pytest_netlab.untrusted import CappedOutput, parse_output_limit, printable

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\r\x00\x7f\x9b31m"


def test_printable_escapes_every_control_but_newline_and_tab():
    assert printable(f"a{ESCAPES}b\tc\n") == "a\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x00\\x7f\\x9b31mb\tc\n"
    assert printable(printable(ESCAPES)) == printable(ESCAPES)  # escaping twice changes nothing
    assert printable("é ü ✓") == "é ü ✓"


def test_errors_show_guest_text_escaped_and_keep_it_raw():
    error = CommandError("h1", "cmd", 1, f"out{ESCAPES}", "err\x1b[31m")
    shown = str(error)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert "out\\x1b]0;pwned" in shown and "err\\x1b[31m" in shown
    assert error.stdout == f"out{ESCAPES}"  # the attribute keeps what the guest sent


def test_capped_output_keeps_both_ends_and_says_how_much_was_cut():
    out = CappedOutput(1024)
    for _ in range(100):
        out.append(b"x" * 1000)
    out.append(b"THE END")
    value = out.value()
    assert value.startswith(b"x" * 512) and value.endswith(b"x" * 505 + b"THE END")
    assert b"\n[... 98983 bytes truncated]\n" in value  # 100007 bytes, 1024 kept
    assert len(value) < 1024 + 40
    small = CappedOutput(1024)
    small.append(b"short")
    assert small.value() == b"short" and small.value(3) == b"sho"


def test_end_marks_are_found_across_chunks_in_a_capped_stream():
    out = CappedOutput(1024)
    mark = _EndMark(b"\nTOKEN ", status=True)
    stream = b"y" * 200_000 + b"\nTOKEN 7\n" + b"stray" * 20000
    for i in range(0, len(stream), 333):  # the mark and its status are split between chunks
        mark.scan(out, stream[i:i + 333])
    mark.scan(out, b"x" * 65536)  # a chunk of more output after the mark
    assert mark.status == 7 and mark.at == 200_000
    value = out.value(mark.at)
    assert value.endswith(b"y" * 512) and value[512:] == b"\n[... 198976 bytes truncated]\n" + b"y" * 512


def test_console_output_without_newlines_is_cut_into_bounded_lines():
    buffer = bytearray(b"a\r\nb\n" + b"z" * (3 * CONSOLE_LINE_MAX + 5))
    lines = _split_lines(buffer)
    assert lines[:2] == [b"a\r", b"b"]
    assert lines[2:] == [b"z" * CONSOLE_LINE_MAX] * 3
    assert buffer == b"z" * 5


def test_host_key_lines_are_checked_and_frozen_at_readiness(caplog):
    marks = ConsoleMarks(logging.getLogger("pytest_netlab.qemu.h1"))
    marks.feed("NETLAB-HOSTKEY ssh-ed25519 AAAA\x1b[2J")
    assert marks.host_key is None  # malformed: ignored, and the warning is escaped
    assert "\x1b" not in caplog.text and "AAAA\\x1b[2J" in caplog.text
    marks.feed("NETLAB-HOSTKEY ssh-ed25519 AAAAfirst")
    assert not marks.ready
    marks.feed("NETLAB-READY")
    marks.feed("NETLAB-HOSTKEY ssh-ed25519 AAAAlater")
    assert marks.host_key == "ssh-ed25519 AAAAfirst" and marks.ready
    marks.feed(f"NETLAB-ERROR {ESCAPES}")
    assert "guest reported: \\x1b]0;pwned" in caplog.text and "\x07" not in caplog.text
    resumed = ConsoleMarks(logging.getLogger("pytest_netlab.qemu.h2"))
    resumed.pin_host_key("ssh-ed25519 AAAAhost")
    resumed.feed("NETLAB-HOSTKEY ssh-ed25519 AAAAguest")
    assert resumed.host_key == "ssh-ed25519 AAAAhost"


def test_the_machine_hands_every_console_line_to_the_guest_protocol(tmp_path):
    machine = QemuMachine(MachineConfig("h1", Path("k"), None, ""), tmp_path)
    for line in ("booting", "NETLAB-HOSTKEY ssh-ed25519 AAAAfirst", "NETLAB-READY"):
        machine._console_line(line)
    assert list(machine.console_lines) == ["booting", "NETLAB-HOSTKEY ssh-ed25519 AAAAfirst", "NETLAB-READY"]
    assert machine.marks.ready and machine.marks.host_key == "ssh-ed25519 AAAAfirst"
    machine.wait_ready(0)  # ready already: returns without waiting


def test_only_the_plugins_section_names_start_a_section():
    output = (
        "@@netlab-section addr\nA\n@@netlab-section ../../etc/x\nB\n"
        "@@netlab-section /tmp/abs\n@@netlab-section route\nR\n"
    )
    assert split_sections(output) == {
        "addr": "A\n@@netlab-section ../../etc/x\nB\n@@netlab-section /tmp/abs\n", "route": "R\n",
    }


def test_evidence_files_refuse_foreign_names_and_symbolic_links(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "route.txt").symlink_to(victim)
    with pytest.raises(OSError):
        _write(tmp_path / "ev" / "route.txt", "owned\n")
    with pytest.raises(ValueError, match="not one of the plugin's"):
        _write(tmp_path / "ev" / "..", "owned\n")
    assert victim.read_text() == "untouched\n"
    _write(tmp_path / "ev" / "addr.txt", "fine\n")
    assert (tmp_path / "ev" / "addr.txt").read_text() == "fine\n"


def test_output_limit_values():
    assert parse_output_limit("64K") == 65536
    assert parse_output_limit("16m") == 16 * 2**20
    assert parse_output_limit(4096) == 4096
    for bad in ("0", "12", "-5M", "lots", "1.5M", True):
        with pytest.raises(ConfigError, match="give a number of bytes of at least 1024"):
            parse_output_limit(bad)


def _arp(sender: bytes, target: bytes) -> bytes:
    arp = struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + b"\x02" * 6 + sender + b"\x00" * 6 + target
    return b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + arp


def test_malformed_frames_are_kept_as_raw_records(tmp_path):
    good = _arp(socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"))
    # a VLAN tag cut short, and an MPLS label stack without its bottom: dpkt raises on both
    vlan = b"\xff" * 6 + b"\x02" * 6 + b"\x81\x00\x01"
    mpls = bytes.fromhex("ffffffffffff02020202020288473d653a98bc5b552c169454ef249edefba6690f84")
    short = b"\x01\x02\x03\x04\x05"  # not even an Ethernet header
    path = tmp_path / "crafted.pcap"
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for frame in (good, vlan, mpls, short, good):
            writer.writepkt(frame, ts=1.0)
    packets = read_pcap(path)
    assert [p.kind for p in packets] == ["arp", "malformed", "malformed", "malformed", "arp"]
    assert [p.frame for p in packets[1:4]] == [vlan, mpls, short]
    assert packets[1].src_mac == "02:02:02:02:02:02" and packets[4].src_ip == "10.0.0.1"


def test_read_pcap_is_bounded(tmp_path, caplog):
    path = tmp_path / "many.pcap"
    frame = _arp(socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"))
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for _ in range(50):
            writer.writepkt(frame, ts=1.0)
    with caplog.at_level(logging.WARNING):
        assert len(read_pcap(path, max_packets=10)) == 10
        assert len(read_pcap(path, max_bytes=len(frame) * 5)) == 5
    assert "only the first 10 frames read" in caplog.text


def test_cleanup_lists_foreign_command_lines_escaped():
    dead = subprocess.Popen(["true"])
    dead.wait()
    env = {**os.environ, OWNER_ENV: f"{dead.pid}-1"}  # an owner that is gone
    proc = subprocess.Popen(["bash", "-c", "exec -a $'\\e]0;pwned\\a\\e[2J' sleep 60"], env=env)
    try:
        deadline = time.monotonic() + 5
        while b"sleep" not in Path(f"/proc/{proc.pid}/comm").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        report = remove_leftovers(None, dry_run=True)  # lists, removes nothing
        (line,) = [p for p in report.processes if p.startswith(f"{proc.pid} ")]
        assert "\x1b" not in line and "\x07" not in line
        assert "\\x1b]0;pwned\\x07\\x1b[2J" in line
    finally:
        proc.kill()
        proc.wait()


def test_console_log_stops_at_its_limit_with_one_note(tmp_path):
    import io

    machine = QemuMachine(MachineConfig("h1", Path("k"), None, ""), tmp_path, console_limit=4096)
    out = io.BytesIO()
    written = 0
    for _ in range(10):  # chunks that end exactly at the limit, then more
        written = machine._log_console(out, b"x" * 1024, written)
    data = out.getvalue()
    assert data.startswith(b"x" * 4096) and data.count(b"reached its limit of 4096 bytes") == 1
    assert len(data) < 4096 + 200 and written == 10 * 1024
