"""SIGTERM (a CI job cancelled) tears labs down like Ctrl-C: nothing is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_netlab.netns import namespace_exists

VICTIM = """
import os, time
from pathlib import Path

def test_waits_for_sigterm(netlab, netlab_config):
    netlab.bridge("br1")
    daemon = netlab.spawn("sleep 600", name="sleeper")
    background = netlab.run("sleep 600 > /dev/null 2>&1 & echo $!").stdout.strip()
    Path("state").write_text(
        f"{netlab.name} {daemon.pid} {background} {netlab_config.runtime_dir}\\n"
    )
    time.sleep(600)
"""


def _wait_for(path: Path, within: float) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {within} s")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["plain", "xdist"])
def test_sigterm_tears_the_lab_down_like_ctrl_c(pytester: pytest.Pytester, workers: list[str]):
    pytester.makepyfile(test_victim=VICTIM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "netlab", "-q", "-p", "no:cacheprovider", *workers],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        namespace, daemon, background, runtime = _wait_for(pytester.path / "state", 60).split()
        assert namespace_exists(namespace) and _alive(int(daemon))
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in output and "SIGTERM" in output, output
    assert not namespace_exists(namespace)
    assert not _alive(int(daemon)) and not _alive(int(background))
    assert not Path(runtime).exists()


def test_the_default_sigterm_action_is_back_after_the_run(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_handler="""
        import signal

        def test_ours_during_the_run():
            assert signal.getsignal(signal.SIGTERM).__qualname__.endswith("on_sigterm")
        """
    )
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        pytester.runpytest_inprocess("-p", "netlab").assert_outcomes(passed=1)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
