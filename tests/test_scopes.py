"""Labs of wider scope: ``netlab_module`` is shared by a module's tests and torn down after
its last one; ``netlab_factory`` serves a user's own session fixture; both are isolated
from each other and from per-test labs, and torn down pass or fail."""

from __future__ import annotations

import pytest

from pytest_netlab.netns import namespace_exists

pytest_plugins = ["pytester"]


def test_module_and_session_labs_are_shared_isolated_and_torn_down(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def shared(netlab_factory):
            with netlab_factory() as lab:
                lab.bridge("br1")
                yield lab
        """
    )
    body = """
        import os
        from pathlib import Path

        NAMES = Path(os.environ["NETLAB_NAMES"])

        def _record(kind, lab):
            with NAMES.open("a") as f:
                f.write(f"{{__name__}} {{kind}} {{lab.name}}\\n")

        def test_one(netlab_module, shared, netlab):
            netlab_module.bridge("br1")  # the same name in three labs at once
            netlab.bridge("br1")
            for kind, lab in (("module", netlab_module), ("session", shared), ("test", netlab)):
                _record(kind, lab)
                assert lab.run("ip -br link show br1").ok

        def test_two(netlab_module, shared):
            assert list(netlab_module.bridges) == ["br1"]  # made by test_one: shared
            _record("module", netlab_module)
            _record("session", shared)
            {last}
    """
    pytester.makepyfile(
        test_a=body.format(last="assert False, 'a failing test still tears its labs down'"),
        test_b=body.format(last="pass"),
    )
    names = pytester.path / "names.txt"
    monkeypatch.setenv("NETLAB_NAMES", str(names))

    result = pytester.runpytest_subprocess("-p", "netlab", "-p", "no:randomly")

    result.assert_outcomes(passed=3, failed=1)
    records = [line.split() for line in names.read_text().splitlines()]
    labs = {(module, kind): set() for module, kind, _ in records}
    for module, kind, name in records:
        labs[module, kind].add(name)
    assert all(len(found) == 1 for found in labs.values())  # one lab per scope, shared
    assert labs["test_a", "session"] == labs["test_b", "session"]
    assert labs["test_a", "module"] != labs["test_b", "module"]
    every = {name for _, _, name in records}
    assert len(every) == 5  # 2 module labs, 1 session lab, 2 per-test labs
    assert not [name for name in every if namespace_exists(name)]
