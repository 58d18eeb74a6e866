"""--netlab-keep-on-fail and --netlab-pause: a test's lab stays up, reachable with the
printed commands, until the person goes on; then it is torn down as usual."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_netlab.keep import kept_dir
from pytest_netlab.netns import namespace_exists
from pytest_netlab.session import runtime_base

FAILING = """
def test_broken(netlab):
    netlab.vm("h1", nics=[netlab.bridge("br1")])
    netlab.start()
    assert False, "failed on purpose"
"""

PASSING = """
def test_fine(netlab):
    netlab.vm("h1")
    netlab.start()
"""


def _inner(
    pytester: pytest.Pytester, source: str, *args: str, workers: str = "0", terminal: str | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Run *source* as a test file in a new pytest process without a controlling
    terminal (as in CI, and so that it never waits for Enter on ours), or with the
    pseudo-terminal *terminal* as its controlling terminal."""
    path = pytester.makepyfile(source)
    out = pytester.path / "inner.out"
    proc = pytester.popen(
        [sys.executable, "-m", "pytest", "-p", "netlab", "-p", "no:cacheprovider", "-n", workers,
         "--netlab-accel", "tcg", *args, str(path)],
        stdout=out.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # a session of its own, without our terminal
        # opening a terminal in a new session makes it the session's controlling terminal
        preexec_fn=(lambda: os.close(os.open(terminal, os.O_RDWR))) if terminal else None,
    )
    return proc, out


def _wait_for_kept(
    directory: Path, proc: subprocess.Popen[bytes], out: Path, timeout: float = 120
) -> Path:
    """The file of the lab the inner run keeps: its owner is the inner pytest or, under
    xdist, one of its workers (a child of it)."""
    deadline = time.monotonic() + timeout
    while True:
        for path in directory.glob("netlab-*-*.txt"):
            owner = int(path.name.split("-")[1])
            if owner == proc.pid or _parent(owner) == proc.pid:
                return path
        assert proc.poll() is None, f"the inner run ended without keeping its lab:\n{out.read_text()}"
        assert time.monotonic() < deadline, f"nothing kept after {timeout} s:\n{out.read_text()}"
        time.sleep(0.1)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _stop(proc: subprocess.Popen[bytes], directory: Path) -> None:
    """Let an inner run go on and tear down (it leaks if killed while holding its lab)."""
    if proc.poll() is None:
        for path in directory.glob("netlab-*-*.txt"):
            owner = int(path.name.split("-")[1])
            if owner == proc.pid or _parent(owner) == proc.pid:
                path.unlink(missing_ok=True)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # pytest tears down on KeyboardInterrupt
        proc.wait(timeout=60)


def _gone(lab: str, port: int) -> None:
    assert not namespace_exists(lab)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("workers", ["0", "1"], ids=["no-xdist", "xdist-worker"])
def test_failed_test_keeps_its_lab_reachable_with_the_printed_commands(
    pytester: pytest.Pytester, workers: str
) -> None:
    proc, out = _inner(
        pytester, FAILING, "--netlab-keep-on-fail", "--netlab-keep-timeout", "120", workers=workers
    )
    directory = kept_dir(runtime_base())
    try:
        kept = _wait_for_kept(directory, proc, out)
        lab = kept.stem
        text = kept.read_text()
        ssh_line = re.search(r"^  h1: (ssh .*)$", text, re.M)
        assert ssh_line, text
        port = int(re.search(r" -p (\d+) ", ssh_line.group(1)).group(1))  # type: ignore[union-attr]
        # the command as printed, with the pinned host key: a shell in the kept guest
        shell = subprocess.run(
            [*shlex.split(ssh_line.group(1)), "-o", "BatchMode=yes", "hostname"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert (shell.returncode, shell.stdout.strip()) == (0, "h1"), shell.stderr
        # by name: pytest-netlab list knows the lab as kept, pytest-netlab exec uses its ssh_config
        listed = _netlab("list", "--json")
        assert [found["kind"] for found in json.loads(listed.stdout) if found["name"] == lab] == ["kept"]
        by_name = _netlab("exec", lab, "h1", "hostname")
        assert (by_name.returncode, by_name.stdout) == (0, "h1\n"), by_name.stderr
        # the printed way into the lab namespace (nsenter; as root also "ip netns exec")
        namespace = re.search(r"^  lab namespace: (nsenter .*) -- bash", text, re.M)
        assert namespace, text
        bridge = subprocess.run(
            [*shlex.split(namespace.group(1)), "--", "ip", "-br", "link", "show", "br1"],
            capture_output=True, text=True, timeout=10, check=False,
        )
        assert bridge.stdout.startswith("br1 "), bridge.stderr
        assert re.search(r"^  h1 console log: \S+console\.log$", text, re.M), text
        assert "delete " + str(kept) in text
        assert proc.poll() is None, "the run went on while the lab was kept"
        kept.unlink()  # the way to go on without a terminal, short of the timeout
        assert proc.wait(timeout=60) == 1
    finally:
        _stop(proc, directory)
    output = out.read_text()
    # printed despite capture, with the same text as the file, then the usual failure
    assert text in output, output
    assert "failed on purpose" in output
    assert not kept.with_suffix(".json").exists()
    _gone(lab, port)


def _netlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_netlab.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_enter_on_the_terminal_ends_the_pause(pytester: pytest.Pytester) -> None:
    master, slave = pty.openpty()
    try:
        proc, out = _inner(
            pytester, PASSING, "--netlab-pause", "--netlab-keep-timeout", "120",
            terminal=os.ttyname(slave),
        )
        directory = kept_dir(runtime_base())
        try:
            kept = _wait_for_kept(directory, proc, out)
            assert "when you press Enter here, delete " in kept.read_text()
            time.sleep(0.5)
            assert proc.poll() is None, "the run went on before Enter"
            os.write(master, b"\n")
            assert proc.wait(timeout=60) == 0, out.read_text()
        finally:
            _stop(proc, directory)
    finally:
        os.close(master)
        os.close(slave)
    assert not kept.exists()
    assert not namespace_exists(kept.stem)


def test_pause_without_terminal_goes_on_after_the_timeout(pytester: pytest.Pytester) -> None:
    proc, out = _inner(pytester, PASSING, "--netlab-pause", "--netlab-keep-timeout", "2")
    kept = _wait_for_kept(kept_dir(runtime_base()), proc, out)
    held_from = time.monotonic()  # the hold starts once the file is written
    while kept.exists() and time.monotonic() - held_from < 60:
        time.sleep(0.05)
    held = time.monotonic() - held_from
    assert proc.wait(timeout=120) == 0, out.read_text()
    output = out.read_text()
    lab = f"netlab-{proc.pid}-1"
    assert kept.name == f"{lab}.txt"
    assert f"test_fine passed; its labs are kept up:\nlab {lab};" in output, output
    assert "or after 2 s" in output and "press Enter" not in output
    # the file is seen up to one poll (0.1 s) late; gone at the timeout, not before nor much later
    assert 1.85 < held < 10, held
    port = int(re.search(r"^  h1: ssh .* -p (\d+) ", output, re.M).group(1))  # type: ignore[union-attr]
    _gone(lab, port)


def test_keep_on_fail_leaves_passing_tests_alone(pytester: pytest.Pytester) -> None:
    proc, out = _inner(pytester, PASSING, "--netlab-keep-on-fail", "--netlab-keep-timeout", "300")
    assert proc.wait(timeout=120) == 0, out.read_text()
    assert "kept up" not in out.read_text()


@pytest.mark.parametrize("value", ["0", "-5"])
def test_keep_timeout_must_be_positive(pytester: pytest.Pytester, value: str) -> None:
    result = pytester.runpytest_subprocess("-p", "netlab", f"--netlab-keep-timeout={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: netlab keep timeout {float(value)!r} is not accepted: *above 0"])


def test_keep_timeout_from_ini_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nnetlab_keep_timeout = soon\n")
    result = pytester.runpytest_subprocess("-p", "netlab")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: netlab keep timeout 'soon' is not accepted: *"])

