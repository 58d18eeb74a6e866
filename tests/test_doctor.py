"""``pytest-netlab doctor`` on this machine: one line per check, exit status from the required ones."""

from __future__ import annotations

import os

import pytest

from pytest_netlab.cli import main
from pytest_netlab.doctor import Check


def test_doctor_passes_here_and_says_tcg_is_used(capsys: pytest.CaptureFixture[str]):
    assert main(["doctor", "--guests", "2"]) == 0
    out = capsys.readouterr().out
    assert "ok   QEMU: QEMU emulator version" in out
    assert "ok   QEMU's user: " in out and "seccomp sandbox available" in out
    assert "ok   /dev/net/tun: can be opened" in out
    assert "ok   namespaces: a network namespace with a bridge can be created" in out
    # on this project's machines /dev/kvm exists but guests hang under it
    # (or QEMU's user may not open it: setup.sh adds it to the kvm group where there is one)
    assert "KVM: /dev/kvm present" in out and any(s in out for s in ("TCG used", "KVM used", "run under TCG"))
    assert "memory: " in out and "2 guests of 128 MiB" in out
    assert "ok   guest budget: " in out and " guests booting at once, " in out
    assert "ok   package image builds: as " in out and "mmdebstrap's " in out
    assert out.rstrip().endswith("verdict: pytest-netlab can run here")


def test_doctor_fails_without_qemu_and_says_the_fix(monkeypatch, capsys):
    monkeypatch.setenv("NETLAB_QEMU", "/nonexistent/qemu")
    monkeypatch.setattr("pytest_netlab.doctor._kvm", lambda: Check("KVM", True, "skipped"))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL QEMU: QEMU binary '/nonexistent/qemu' not found" in out
    assert "     fix: apt-get install qemu-system-x86" in out
    assert "verdict: pytest-netlab cannot run here" in out


def test_a_failed_optional_check_is_a_warning():
    line = Check("tcpdump", False, "not found", "apt-get install tcpdump", required=False).line()
    assert line == "warn tcpdump: not found\n     fix: apt-get install tcpdump"


def test_doctor_says_what_an_ordinary_user_lacks_for_package_builds(monkeypatch: pytest.MonkeyPatch):
    from pytest_netlab import doctor, subids

    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(subids, "current_user", lambda: "alice")
    monkeypatch.setattr(subids, "ranges", lambda *args: [])
    missing = subids.Missing("newuidmap and newgidmap not found", "apt-get install uidmap (as root)")
    monkeypatch.setattr(subids, "unshare_missing", lambda: missing)
    assert doctor._package_builds().line() == (
        "warn package image builds: as alice: mmdebstrap's unshare mode, but newuidmap and newgidmap "
        "not found\n     fix: apt-get install uidmap (as root)"
    )


def test_the_doctor_says_whether_every_user_shares_the_guest_budget(monkeypatch, tmp_path, capsys):
    from pytest_netlab import budget_records
    from pytest_netlab.session import runtime_base

    monkeypatch.setattr(budget_records, "SHARED_BUDGET_DIR", tmp_path / "budget")
    assert main(["doctor"]) == 0
    own = runtime_base() / "budget"
    assert (f"warn budget sharing: per user: records in {own}, so other users' runs have budgets of their "
            f"own ({tmp_path}/budget is missing)\n     fix: sudo ./setup.sh (it makes {tmp_path}/budget, "
            "owned by root, mode 1777)") in capsys.readouterr().out
    if os.geteuid() == 0:  # as setup.sh makes it
        (tmp_path / "budget").mkdir(mode=0o1777)
        os.chmod(tmp_path / "budget", 0o1777)
        assert main(["doctor"]) == 0
        assert (f"ok   budget sharing: machine-wide: records in {tmp_path}/budget, shared by root's and "
                "every user's runs") in capsys.readouterr().out
