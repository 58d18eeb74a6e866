"""Checks that hold for every test of the repository, the example tests and the plugin's
own: every QEMU a test starts runs unprivileged and sandboxed (docs/security.md, "QEMU's
privileges")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_netlab.privileges import ProcessPrivileges
from pytest_netlab.qemu import QemuMachine

# every QEMU a test of this process starts, as /proc saw it once QEMU answered QMP: a test
# that started one with privileges fails (QEMUs of inner runs and CLI children refuse
# to go on by themselves: see QemuMachine._check_privileges)
_started_qemus: list[tuple[str, ProcessPrivileges]] = []


@pytest.fixture(scope="session", autouse=True)
def _watch_every_qemu() -> Iterator[None]:
    original = QemuMachine.launch

    def launch(machine: QemuMachine) -> None:
        try:
            original(machine)
        finally:
            seen = ProcessPrivileges.of(machine.pid) if machine.is_running() and machine.pid else None
            if seen is not None:
                _started_qemus.append((machine.name, seen))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(QemuMachine, "launch", launch)
        yield


@pytest.fixture(autouse=True)
def _qemu_never_privileged(_watch_every_qemu: None) -> Iterator[None]:
    before = len(_started_qemus)
    yield
    bad = [f"{name} (pid {seen.pid}) {'; '.join(seen.problems())}"
           for name, seen in _started_qemus[before:] if seen.problems()]
    if bad:
        pytest.fail("QEMU ran with privileges: " + ", ".join(bad))
