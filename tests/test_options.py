"""Reading and checking the --netlab-* options and ini values (pure logic: a fake source)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pytest_netlab.errors import ConfigError
from pytest_netlab.options import read_options

#: what pytest gives when neither the command line nor the ini file says anything
INI_DEFAULTS = {
    "netlab_accel": "auto", "netlab_boot": "snapshot", "netlab_boot_timeout": "120",
    "netlab_command_timeout": "60", "netlab_keep_timeout": "300", "netlab_packages": "",
    "netlab_output_limit": "16M", "netlab_max_guests": "", "netlab_max_memory": "",
}
OPTION_DEFAULTS = {"--netlab-pcap": "off", "--netlab-keep-on-fail": False, "--netlab-pause": False}


class _Source:
    def __init__(self, options: dict[str, Any], ini: dict[str, str]) -> None:
        self.options = {**OPTION_DEFAULTS, **options}
        self.ini = {**INI_DEFAULTS, **ini}

    def getoption(self, name: str) -> Any:
        return self.options.get(name)

    def getini(self, name: str) -> Any:
        return self.ini[name]


def _read(options: dict[str, Any] | None = None, ini: dict[str, str] | None = None):
    return read_options(_Source(options or {}, ini or {}))


def test_an_option_given_wins_over_its_ini_value_and_the_ini_value_over_the_default():
    read = _read({"--netlab-boot-timeout": 30.0, "--netlab-accel": "tcg"},
                 {"netlab_boot_timeout": "90", "netlab_command_timeout": "5", "netlab_accel": "kvm"})
    assert (read.boot_timeout, read.command_timeout, read.keep.timeout) == (30.0, 5.0, 300.0)
    assert read.accel == "tcg" and read.boot == "snapshot"


def test_values_are_parsed_into_the_session():
    read = _read({"--netlab-packages": "iperf3, frr", "--netlab-max-memory": "2G",
                  "--netlab-artifacts": "evidence", "--netlab-pause": True}, {"netlab_max_guests": "3"})
    assert read.packages == ("frr", "iperf3") and read.output_limit == 16 * 2**20
    assert (read.max_guests, read.max_memory) == (3, 2048)
    assert read.artifacts == Path("evidence").resolve() and read.keep.pause and not read.keep.on_fail
    session = read.session(report=print, progress=print)
    assert (session.packages, session.max_memory, session.artifacts) == (read.packages, 2048, read.artifacts)


def test_an_empty_option_given_is_none_for_packages_and_unset_for_the_sizes():
    read = _read({"--netlab-packages": "", "--netlab-output-limit": "", "--netlab-max-guests": ""},
                 {"netlab_packages": "frr", "netlab_output_limit": "64K", "netlab_max_guests": "2"})
    assert (read.packages, read.output_limit, read.max_guests) == ((), 65536, 2)


@pytest.mark.parametrize(
    ("options", "ini", "message"),
    [
        ({}, {"netlab_boot": "warm"}, "netlab_boot = 'warm' is not accepted: use one of snapshot, cold"),
        ({"--netlab-command-timeout": 0.0}, {}, "netlab command timeout 0.0 is not accepted"),
        ({}, {"netlab_keep_timeout": "soon"}, "netlab keep timeout 'soon' is not accepted"),
        ({"--netlab-packages": "Bad!"}, {}, "netlab packages 'Bad!': package name 'Bad!' is not accepted"),
        ({"--netlab-output-limit": "12"}, {}, "netlab output limit '12' is not accepted"),
        ({}, {"netlab_max_guests": "0"}, "netlab max guests '0' is not accepted"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_it(options, ini, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        _read(options, ini)
