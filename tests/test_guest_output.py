"""Guests that misbehave on purpose: nothing a guest prints, sends or stores decides a
host path, a host command, or how much host memory or disk is used (docs/security.md, "Guest output")."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_netlab import CommandError, CommandTimeout, TransferError, pcap
from pytest_netlab.artifacts import GUEST_COMMANDS, STATE_COMMANDS, collect
from pytest_netlab.lab import Lab
from pytest_netlab.qemu import CONSOLE_LINE_MAX, CONSOLE_LINES_KEPT, QemuMachine
from pytest_netlab.ssh import SSHSession

pytest_plugins = ["pytester"]

LIMIT = 64 * 1024  # the lab's output limit: small, so floods pass it quickly


@pytest.fixture(scope="module")
def lab(netlab_config, tmp_path_factory):
    settings = dataclasses.replace(netlab_config.settings(), output_limit=LIMIT)
    lab = Lab(tmp_path_factory.mktemp("guestout"), netlab_config.image, netlab_config.key, settings)
    try:
        br1 = lab.bridge("br1")
        lab.vm("h1", nics=[br1])  # resumed from a saved state: the host made its host key
        lab.vm("h2", nics=[br1], append="netlab.test=cold")  # a cold boot: it prints its key
        lab.start()
        yield lab
    finally:
        lab.close()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


FAKE_IP = r"""#!/bin/sh
printf '@@netlab-section ../../../../netlab-escaped\nowned\n'
printf '@@netlab-section /tmp/netlab-guestout-absolute\nowned\n'
printf '@@netlab-section sub/../../../netlab-escaped2\n\033]0;pwned\007\033[2J\n'
"""


def test_section_lines_of_a_guest_never_become_host_paths(lab, tmp_path):
    h1 = lab.vms["h1"]
    h1.ssh("mkdir -p /usr/local/sbin")
    h1.put(_text_file(tmp_path / "ip", FAKE_IP), "/usr/local/sbin/ip", mode=0o755)  # first on PATH
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    evidence_dir = tmp_path / "deep" / "er" / "ev"
    (evidence_dir / "h2").mkdir(parents=True)
    (evidence_dir / "h2" / "route.txt").symlink_to(victim)  # planted: must not be written through
    try:
        evidence = collect([lab], evidence_dir)
    finally:
        h1.ssh("rm -f /usr/local/sbin/ip")
    assert not list(tmp_path.rglob("netlab-escaped*"))
    assert not Path("/tmp/netlab-guestout-absolute.txt").exists()
    allowed = {f"{name}.txt" for name, _ in STATE_COMMANDS + GUEST_COMMANDS} | {"commands.txt", "console.log"}
    assert {p.name for p in (evidence_dir / "h1").iterdir()} <= allowed
    assert "owned" in (evidence_dir / "h1" / "addr.txt").read_text()  # the guest's text stays text
    assert victim.read_text() == "untouched\n"
    assert any("h2" in p and "route.txt" in p for p in evidence.problems)


def _text_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_command_output_is_capped_with_a_note(lab):
    h1 = lab.vms["h1"]
    result = h1.ssh("head -c 1000000 /dev/zero | tr '\\0' a; echo END >&2")
    assert len(result.stdout) < LIMIT + 100
    assert f"[... {1000000 - LIMIT} bytes truncated]" in result.stdout
    assert result.stdout.endswith("a" * 100) and result.stderr == "END\n"
    fed = h1.ssh("head -c 500000 /dev/zero; cat > /dev/null", stdin="x")  # the stdin path too
    assert len(fed.stdout) < LIMIT + 100 and "bytes truncated]" in fed.stdout


def test_an_endless_flood_costs_its_timeout_and_the_limit_only(lab):
    h1 = lab.vms["h1"]
    before = _rss_kib()
    with pytest.raises(CommandTimeout) as caught:
        h1.ssh("base64 /dev/urandom", timeout=4)
    assert len(caught.value.stdout) < LIMIT + 100 and "bytes truncated]" in caught.value.stdout
    assert len(str(caught.value)) < 20000  # the message shows a tail of the kept output
    # a background writer on the command's channel (10 s of lines, then a marker) does not
    # hold the next command: it ends while the writer still writes
    h1.ssh("rm -f /tmp/writer-done; (i=0; while [ $i -lt 100 ]; do echo stray; sleep 0.1; "
           "i=$((i + 1)); done; touch /tmp/writer-done) &")
    following = h1.ssh("echo next; test -e /tmp/writer-done || echo writing", timeout=30)
    # what the writer prints while it runs is that command's too (docs/helpers.md); in all
    # far less than the output limit, so nothing of the command's own is cut
    assert "next\nwriting\n" in following.stdout.replace("stray\n", "")
    h1.wait_until("test -e /tmp/writer-done", timeout=60)  # no strays for the tests after
    assert _rss_kib() - before < 50 * 1024


def test_a_console_flood_is_bounded_and_other_guests_go_on(lab):
    h1, h2 = lab.vms["h1"], lab.vms["h2"]
    machine = h1.machine
    seen = machine.console_seen
    before = _rss_kib()
    # 300 kB without a newline, then many short lines, then a mark
    h1.ssh(
        "( head -c 300000 /dev/zero | tr '\\0' x; echo; seq 1 3000; echo FLOOD-DONE ) > /dev/ttyS0 &"
    )
    answered = []
    flood = threading.Thread(target=lambda: machine.wait_console("FLOOD-DONE", 120))
    flood.start()
    while flood.is_alive():  # the other guest of the worker answers all along
        answered.append(h2.ssh("echo ok", timeout=10).stdout)
    flood.join()
    assert answered and all(a == "ok\n" for a in answered)
    size = machine.console_log.stat().st_size
    assert LIMIT <= size < LIMIT + 200
    assert "console.log reached its limit" in machine.console_log.read_text(errors="replace")
    assert machine.console_seen - seen >= 3000 + 300000 // CONSOLE_LINE_MAX
    assert len(machine.console_lines) <= CONSOLE_LINES_KEPT
    assert all(len(line) <= CONSOLE_LINE_MAX for line in machine.console_lines)
    assert _rss_kib() - before < 50 * 1024


def test_get_is_bounded_by_max_bytes_and_one_deadline(lab, tmp_path):
    h1 = lab.vms["h1"]
    local = tmp_path / "copy"
    with pytest.raises(TransferError, match=r"/dev/zero: more than max_bytes=100000 bytes"):
        h1.get("/dev/zero", local, max_bytes=100000)  # endless, and reported as 0 bytes
    assert not local.exists()
    h1.ssh("truncate -s 1099511627776 /tmp/huge")  # reports a terabyte: not prefetched
    started = time.monotonic()
    with pytest.raises(TransferError, match="more than max_bytes=200000 bytes"):
        h1.get("/tmp/huge", local, max_bytes=200000)
    assert time.monotonic() - started < 15
    # a guest that answers slowly (its SSH traffic held to 200 kbit/s): every read is
    # answered in time, the whole copy still ends at its deadline
    h1.ssh("rm -f /tmp/huge; head -c 2000000 /dev/urandom > /tmp/slow; "
           "tc qdisc replace dev mgmt0 root tbf rate 200kbit burst 8kb latency 2s")
    started = time.monotonic()
    try:
        with pytest.raises(TransferError, match=r"/tmp/slow: not done within 3 s"):
            h1.get("/tmp/slow", local, timeout=3)
        elapsed = time.monotonic() - started
    finally:
        h1.console_run("tc qdisc del dev mgmt0 root")  # not behind the slowed SSH traffic
    assert elapsed < 6 and not local.exists()
    h1.ssh("echo fine > /tmp/fine")
    assert h1.get("/tmp/fine", local).read_text() == "fine\n"  # the session is still usable
    with pytest.raises(Exception, match="max_bytes 0 is out of range"):
        h1.get("/tmp/fine", local, max_bytes=0)


@pytest.mark.parametrize("name", ["h1", "h2"])
def test_a_host_key_printed_after_boot_is_ignored(lab, netlab_config, name):
    vm = lab.vms[name]
    pinned = vm.machine.marks.host_key
    assert vm.ssh("cat /etc/dropbear/dropbear_ed25519_host_key.pub").stdout.strip() == pinned
    fake = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostileHostileHostileHostileHostileHostile"
    vm.console_run(f"echo 'NETLAB-HOSTKEY {fake}'")  # in a command's output on the console
    vm.ssh(f"echo 'NETLAB-HOSTKEY {fake}' > /dev/ttyS0; echo 'NETLAB-READY' > /dev/ttyS0")
    vm.console_run("true")  # the lines above were read before this command's end
    assert vm.machine.marks.host_key == pinned
    session = SSHSession(vm.name, vm.host_port(22), netlab_config.key, vm.machine.marks.host_key)
    session.connect(timeout=20)
    session.close()


def test_guest_text_is_escaped_where_it_is_shown(lab, caplog):
    h1 = lab.vms["h1"]
    # OSC title, clear screen, and a C1 CSI (U+009B, sent as UTF-8)
    evil = "printf 'a\\033]0;pwned\\007\\033[2J\\302\\233b\\n'"
    with pytest.raises(CommandError) as caught:
        h1.ssh(f"{evil}; exit 3")
    shown = str(caught.value)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert "a\\x1b]0;pwned\\x07\\x1b[2J\\x9bb" in shown
    assert "\x1b" in caught.value.stdout  # the raw bytes are still there for the test
    h2 = lab.vms["h2"]  # its console log is not full
    h2.ssh(f"{{ {evil}; echo 'NETLAB-ERROR \\033[31mred'; echo ESC-DONE; }} > /dev/ttyS0")
    h2.machine.wait_console("ESC-DONE", 30)
    tail = h2.machine.console_tail()
    assert "\x1b" not in tail and "a\\x1b]0;pwned" in tail
    reported = [r.getMessage() for r in caplog.records if "guest reported" in r.getMessage()]
    assert reported and all("\x1b" not in m for m in reported)
    assert "\x1b" in h2.machine.console_log.read_text(errors="replace")  # the file keeps raw bytes


_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("br1", 0))
head = b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x09"
for frame in sys.argv[1:]:
    s.send(head + bytes.fromhex(frame))
    time.sleep(0.002)  # paced, so tcpdump's socket buffer takes every frame
"""


def test_a_malformed_frame_on_a_bridge_does_not_break_the_capture(lab):
    arp = "0806" + "0001080006040001" + "02" * 6 + "0a000009" + "00" * 6 + "0a000001"
    vlan_cut = "810001"  # a VLAN tag cut short: dpkt raises on it
    with lab.capture("br1") as capture:
        lab.run([sys.executable, "-c", _SEND, arp, vlan_cut, arp])
    kinds = [p.kind for p in capture.packets if p.src_mac == "02:00:00:00:00:09"]
    assert kinds == ["arp", "malformed", "arp"]


def test_a_capture_stops_growing_at_its_limit(lab, monkeypatch):
    monkeypatch.setattr(pcap, "PCAP_FILE_LIMIT", 100_000)
    frame = "88b5" + "00" * 1000  # local experimental ethertype, 1 kB each
    with lab.capture("br1") as capture:
        lab.run([sys.executable, "-c", _SEND, *[frame] * 300])
    assert capture.path.stat().st_size == 100_000
    assert capture.truncated
    assert 50 < len(capture.packets) < 100


def test_report_sections_are_escaped_and_the_output_limit_is_an_option(pytester: pytest.Pytester):
    pytester.makepyfile(
        r"""
        def test_fails(netlab):
            h1 = netlab.vm("h1", nics=[netlab.bridge("br1")])
            netlab.start()
            assert netlab.settings.output_limit == 65536
            out = h1.ssh("head -c 100000 /dev/zero").stdout
            assert len(out) < 66000 and "bytes truncated]" in out
            h1.ssh("mkdir -p /usr/local/sbin; printf '#!/bin/sh\\nprintf "
                   "\"\\\\033]0;pwned\\\\007\\\\033[2J\\\\n\"\\n' > /usr/local/sbin/ip; "
                   "chmod +x /usr/local/sbin/ip")
            h1.ssh("printf '\\033]0;pwned\\007'; false")
        """
    )
    result = pytester.runpytest_subprocess("-p", "netlab", "--netlab-output-limit=64K", "-rA")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "netlab h1" in text and "\\x1b]0;pwned\\x07" in text  # the section, escaped
    assert "\x1b" not in text and "\x07" not in text
    bad = pytester.runpytest_subprocess("-p", "netlab", "--netlab-output-limit=12")
    assert "netlab output limit '12' is not accepted" in bad.stderr.str()


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries, as the kernel unpacks it."""
    out = b""
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out


def _template_guest_with_first_init(netlab_config, tmp_path: Path, name: str, first: bytes) -> QemuMachine:
    """A template guest of the default image (not launched yet) whose kernel runs the
    script *first* (which ends in ``exec /init``) before the image's init: an archive
    before the image's adds it."""
    from pytest_netlab.templates import Layout

    image = netlab_config.image
    settings = netlab_config.settings()
    config = settings.templates.machine_config(Layout(128, 1, settings.accel, ()), image, name)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(_cpio([(f"netlab-{name}-init", 0o100755, first)]) + image.initrd.read_bytes())
    config.cmdline += f" rdinit=/netlab-{name}-init"
    config.initrd = initrd
    return QemuMachine(config, tmp_path / name)


def test_a_template_guest_whose_console_echo_stays_on_powers_off(netlab_config, tmp_path):
    """Fail closed: without a console that stops echoing, the guest never asks for the
    line with its private host key (it powers off), so the key cannot be echoed."""
    from pytest_netlab.errors import QemuError
    from pytest_netlab.templates import TEMPLATE_MARK

    # a first init that makes /dev/ttyS0 a directory (in the kernel's one devtmpfs) and
    # runs the image's init: stty cannot turn that console's echo off, and the guest's
    # output goes to /dev/console, the same port
    steps = (b"mount -t devtmpfs devtmpfs /dev", b"rm -f /dev/ttyS0", b"mkdir /dev/ttyS0", b"umount /dev")
    first = b"#!/usr/bin/busybox sh\n" + b"".join(b"/usr/bin/busybox " + c + b"\n" for c in steps)
    first += b"exec /init\n"
    machine = _template_guest_with_first_init(netlab_config, tmp_path, "noecho", first)
    machine.launch()
    try:
        with pytest.raises(QemuError, match=f"QEMU exited before the guest printed {TEMPLATE_MARK}"):
            machine.wait_console(TEMPLATE_MARK, netlab_config.settings().boot_timeout)
    finally:
        machine.shutdown()
    assert "cannot turn the console echo off: refusing to take the configuration line" in (
        machine.console_log.read_text(errors="replace")
    )


def test_a_template_copy_that_cannot_reseed_its_crng_powers_off_instead_of_becoming_ready(
    netlab_config, tmp_path
):
    """Fail closed: a copy whose CRNG would stay the template's never starts SSH."""
    from pytest_netlab.errors import QemuError
    from pytest_netlab.guest_protocol import READY_MARK, GuestHostKey, config_line
    from pytest_netlab.templates import TEMPLATE_MARK

    # a first init that puts a reseed that fails as the kernel does without CAP_SYS_ADMIN
    # (EPERM) in the helper's place
    first = (
        b"#!/usr/bin/busybox sh\n"
        b"/usr/bin/busybox printf '#!/usr/bin/busybox sh\\nexit 1\\n' > /usr/lib/netlab/reseed\n"
        b"exec /init\n"
    )
    machine = _template_guest_with_first_init(netlab_config, tmp_path, "noreseed", first)
    machine.launch()
    try:
        machine.wait_console(TEMPLATE_MARK, netlab_config.settings().boot_timeout)
        machine.write_console(config_line("h1", [], "ssh-ed25519", "AAAA", GuestHostKey.generate()))
        with pytest.raises(QemuError, match=f"QEMU exited before the guest printed {READY_MARK}"):
            machine.wait_console(READY_MARK, netlab_config.settings().boot_timeout)
    finally:
        machine.shutdown()
    log = machine.console_log.read_text(errors="replace")
    assert "NETLAB-ERROR cannot reseed the kernel CRNG (/usr/lib/netlab/reseed exit status 1)" in log
    assert "powering off" in log
