"""Labs side by side: two xdist workers, and two separate pytest runs, each build the
same ``br1``/``vport11`` lab at the same time without colliding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_netlab.netns import namespace_exists

pytest_plugins = ["pytester"]

# Both tests hold their lab up until the other one's is up too (a barrier of files named
# after the labs), ping inside it, and wait again before teardown: the labs overlap.
_SUITE = """
import json, os, time
from pathlib import Path

BARRIER = Path(os.environ["NETLAB_BARRIER"])

def _meet(step, lab):
    (BARRIER / step).mkdir(parents=True, exist_ok=True)
    (BARRIER / step / lab.name).touch()
    deadline = time.monotonic() + 180
    while len(list((BARRIER / step).iterdir())) < 2:
        assert time.monotonic() < deadline, f"the other lab never reached {step}"
        time.sleep(0.05)

def _same_lab_as_the_documents(netlab):
    br1 = netlab.bridge("br1")
    br1.add_address("10.20.10.254/24")
    h1 = netlab.vm("h1", nics=[br1])
    netlab.start()
    assert h1.taps == ["vport11"]
    assert [link["ifname"] for link in json.loads(netlab.run("ip -j link show master br1").stdout)] == [
        "vport11"
    ]
    h1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up")
    _meet("up", netlab)
    assert h1.ping("10.20.10.254", count=3, interval=0.2, timeout=5)
    assert netlab.run("ping -n -c 1 -W 5 10.20.10.1")
    _meet("done", netlab)

def test_first(netlab):
    _same_lab_as_the_documents(netlab)

def test_second(netlab):
    _same_lab_as_the_documents(netlab)
"""


def _labs_are_gone(barrier: Path) -> list[str]:
    names = [p.name for p in (barrier / "up").iterdir()]
    assert len(names) == 2 and len(set(names)) == 2
    return [name for name in names if namespace_exists(name)]


def test_two_xdist_workers_build_br1_at_once(pytester: pytest.Pytester, monkeypatch):
    pytester.makepyfile(test_suite=_SUITE)
    barrier = pytester.path / "barrier"
    monkeypatch.setenv("NETLAB_BARRIER", str(barrier))
    result = pytester.runpytest_subprocess("-p", "netlab", "--netlab-accel=tcg", "-n", "2", "--dist=load")
    result.assert_outcomes(passed=2)
    assert _labs_are_gone(barrier) == []


def test_two_pytest_runs_build_br1_at_once(pytester: pytest.Pytester):
    pytester.makepyfile(test_suite=_SUITE)
    barrier = pytester.path / "barrier"
    env = {**os.environ, "NETLAB_BARRIER": str(barrier)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "netlab", "--netlab-accel=tcg", "-q",
             "-p", "no:cacheprovider", f"--basetemp={pytester.path / f'tmp-{which}'}",
             "-k", which],
            cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for which in ("first", "second")
    ]
    outputs = [run.communicate(timeout=400)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "1 passed" in output
    assert _labs_are_gone(barrier) == []
