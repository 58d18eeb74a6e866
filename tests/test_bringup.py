"""How the failures of several guests' bring-up become one error (pytest_netlab.bringup)."""

from __future__ import annotations

import pytest

from pytest_netlab.bringup import combined
from pytest_netlab.errors import BootTimeout, CommandError, LabError, QemuError, SSHError


def test_one_failure_is_raised_as_it_is():
    error = SSHError("h1: refused")
    assert combined({"h1": error}) is error


@pytest.mark.parametrize(
    ("errors", "kind"),
    [
        ([BootTimeout("late"), BootTimeout("later")], BootTimeout),
        ([BootTimeout("late"), QemuError("died")], QemuError),
        ([SSHError("refused"), SSHError("reset")], SSHError),
        ([SSHError("refused"), BootTimeout("late")], LabError),
        ([LabError("no address"), CommandError("h2", "ip", 1, "", "bad")], LabError),
    ],
)
def test_several_failures_are_one_error_of_the_kind_they_share_listing_each(errors, kind):
    error = combined({f"h{i}": e for i, e in enumerate(errors, 1)})
    assert type(error) is kind
    assert str(error) == "\n".join(
        [f"{len(errors)} guests failed to come up:", *(f"- h{i}: {e}" for i, e in enumerate(errors, 1))]
    )
    assert error.__cause__ is errors[0]


def test_a_bug_is_not_hidden_in_a_list():
    bug = TypeError("a bug")
    assert combined({"h1": BootTimeout("late"), "h2": bug}) is bug
