"""Choosing the accelerator from what is known, without booting a probe guest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_netlab import accel
from pytest_netlab.errors import AcceleratorError


@pytest.fixture
def kvm_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_device_usable", lambda: None)


def _cache(cache_dir: Path, unusable: str | None) -> None:
    path, key = accel._probe_cache(cache_dir)
    path.write_text(json.dumps({"key": key, "unusable": unusable}))


def test_no_probe_yet_means_not_known(tmp_path: Path, kvm_opens: None) -> None:
    assert accel.known_decision("auto", tmp_path) is None


def test_a_cached_failed_probe_means_tcg_and_says_why(tmp_path: Path, kvm_opens: None) -> None:
    _cache(tmp_path, "a guest did not boot under KVM within 10 s")
    reason = "KVM not usable: a guest did not boot under KVM within 10 s"
    assert accel.known_decision("auto", tmp_path) == accel.AccelDecision("tcg", reason)
    with pytest.raises(AcceleratorError, match="'kvm' was requested but cannot be used: a guest did not"):
        accel.known_decision("kvm", tmp_path)


def test_a_cached_good_probe_means_kvm(tmp_path: Path, kvm_opens: None) -> None:
    _cache(tmp_path, None)
    assert accel.known_decision("auto", tmp_path) == accel.AccelDecision("kvm", "a guest booted under KVM")
    assert accel.decide_accelerator("auto", tmp_path).accel == "kvm"  # no probe: the cache answers


def test_a_probe_of_another_boot_or_qemu_is_not_used(tmp_path: Path, kvm_opens: None) -> None:
    path, key = accel._probe_cache(tmp_path)
    path.write_text(json.dumps({"key": {**key, "boot_id": "another boot"}, "unusable": None}))
    assert accel.known_decision("auto", tmp_path) is None


def test_tcg_requested_needs_nothing(tmp_path: Path) -> None:
    assert accel.known_decision("tcg", tmp_path) == accel.AccelDecision("tcg", "requested")
    assert not (tmp_path / "kvm-probe.json").exists()
