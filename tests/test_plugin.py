"""The pytest glue, through pytester: options, ini values, usage errors, the header."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_netlab import plugin

pytest_plugins = ["pytester"]


def test_options_are_in_a_netlab_group_with_defaults(pytester: pytest.Pytester):
    result = pytester.runpytest("-p", "netlab", "--help")
    result.stdout.fnmatch_lines(
        [
            "*pytest-netlab*",
            "*--netlab-accel={auto,kvm,tcg}*",
            "*--netlab-boot-timeout=SECONDS*",
            "*--netlab-artifacts=DIR*",
            "*(default: netlab-artifacts inside the test's*",
            "*--netlab-pcap=*{off,on-failure,always}*",
            "*(default: off)*",
        ]
    )
    result.stdout.fnmatch_lines(["*netlab_accel (string):", "*accelerator: auto, kvm or tcg (default auto)"])


def test_bad_accelerator_in_ini_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\nnetlab_accel = xen\n")
    result = pytester.runpytest("-p", "netlab")
    result.stderr.fnmatch_lines(["*netlab_accel = 'xen' is not accepted: use one of auto, kvm, tcg*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_bad_timeout_is_a_usage_error(pytester: pytest.Pytester):
    result = pytester.runpytest("-p", "netlab", "--netlab-boot-timeout=-3")
    result.stderr.fnmatch_lines(["*boot timeout -3.0 is not accepted*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_header_names_the_accelerator_and_a_lab_test_passes(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        def test_one_guest(netlab):
            vm = netlab.vm("solo")
            netlab.start()
            assert vm.ssh("echo hi").stdout == "hi\\n"
        """
    )
    result = pytester.runpytest_subprocess("-p", "netlab", "--netlab-accel=tcg")
    result.stdout.fnmatch_lines(["netlab: accelerator tcg (requested)*", "*1 passed*"])


def test_a_run_without_labs_builds_nothing_and_boots_nothing(
    pytester: pytest.Pytester, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # the plugin is loaded in every run of a project that installs it: the header must
    # not build the image or boot a guest under KVM to find the accelerator
    cache = tmp_path / "cache"
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(cache))
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "netlab")
    result.stdout.fnmatch_lines([
        # "auto (decided at the first lab)", or "tcg (KVM not usable: ...)" without /dev/kvm
        f"netlab: accelerator *, snapshot boot, guest image {cache}/images/*(built at the first lab)",
        "*1 passed*",
    ])
    assert not (cache / "images").exists()
    assert not (cache / "kvm-probe.json").exists()


def test_failed_lab_test_still_tears_down(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import os
        def test_fails(netlab):
            netlab.bridge("br1")
            vm = netlab.vm("h1")
            netlab.start()
            with open(os.environ["NETLAB_PROBE"], "w") as f:
                f.write(f"{netlab.name} {vm.machine.pid}")
            assert vm.ping("10.99.99.99", timeout=0.5)
        """
    )
    probe = pytester.path / "probe.txt"
    env = {**os.environ, "NETLAB_PROBE": str(probe)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "netlab", "--netlab-accel=tcg", "-q"],
        cwd=pytester.path, env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ping 10.99.99.99: nothing sent (ping: connect: Network is unreachable)" in proc.stdout
    namespace, pid = probe.read_text().split()
    assert not os.path.exists(f"/run/netns/{namespace}")
    assert not os.path.exists(f"/proc/{pid}")


DOCS = Path(__file__).parent.parent / "docs"


class _RecordingParser:
    """Stands in for pytest's parser: records what the plugin declares."""

    def __init__(self) -> None:
        self.groups: dict[str, list[str]] = {}
        self.inis: list[str] = []
        self._group = ""

    def getgroup(self, name: str, description: str = "") -> _RecordingParser:
        self._group = name
        return self

    def addoption(self, *names: str, **kwargs: object) -> None:
        self.groups.setdefault(self._group, []).extend(n for n in names if n.startswith("--"))

    def addini(self, name: str, help: str, **kwargs: object) -> None:
        self.inis.append(name)


def _declared() -> _RecordingParser:
    parser = _RecordingParser()
    plugin.pytest_addoption(parser)  # type: ignore[arg-type]
    return parser


def _help_entries(lines: list[str]) -> dict[str, str]:
    """Each entry of a --help section: its first word -> its whole text, lines joined.
    An entry starts at a line indented by two spaces; deeper lines continue it."""
    entries: dict[str, str] = {}
    name = ""
    for line in lines:
        if re.match(r"  \S", line):
            name = line.split()[0].split("=")[0]
            entries[name] = line.strip()
        elif name and line.startswith("   "):
            entries[name] += " " + line.strip()
        else:
            name = ""
    return entries


def test_every_netlab_option_and_ini_has_its_default_in_the_help(pytester: pytest.Pytester):
    out = pytester.runpytest("-p", "netlab", "--help").stdout.lines
    start = out.index("pytest-netlab: network labs of QEMU guests:")
    end = out.index("", start)
    options = _help_entries(out[start + 1:end])
    inis = {name: text for name, text in _help_entries(out).items() if name.startswith("netlab_")}

    declared = _declared()
    assert sorted(options) == sorted(declared.groups["netlab"])  # the group holds them all
    assert list(declared.groups) == ["netlab"]
    assert not [line for line in out[:start] + out[end:] if line.lstrip().startswith("--netlab-")]
    assert sorted(inis) == sorted(declared.inis)
    assert "--netlab-command-timeout" in options and "netlab_command_timeout" in inis
    for name, text in {**options, **inis}.items():
        assert "(default" in text, f"{name} does not say its default: {text}"


def test_the_options_page_lists_every_option_and_ini():
    page = (DOCS / "options.md").read_text()
    declared = _declared()
    for name in [*declared.groups["netlab"], *declared.inis]:
        assert f"`{name}" in page, f"{name} is not in docs/options.md"


def test_command_timeout_from_the_command_line_overrides_the_ini(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\nnetlab_command_timeout = 60\n")
    pytester.makepyfile(
        """
        import time

        import pytest

        from pytest_netlab import CommandTimeout

        def test_a_slow_command_times_out(netlab):
            vm = netlab.vm("h1")
            netlab.start()
            started = time.monotonic()
            with pytest.raises(CommandTimeout):
                vm.ssh("sleep 30")
            assert time.monotonic() - started < 10
            assert vm.ssh("sleep 3", timeout=20).status == 0  # timeout= still wins
        """
    )
    result = pytester.runpytest_subprocess("-p", "netlab", "--netlab-accel=tcg", "--netlab-command-timeout=2")
    result.assert_outcomes(passed=1)


def test_a_zero_command_timeout_is_refused_as_the_options_page_shows(pytester: pytest.Pytester):
    blocks = re.findall(r"```\n\$ (pytest .*)\n(ERROR: .*)\n```", (DOCS / "options.md").read_text())
    assert len(blocks) >= 2, "docs/options.md shows no refused command"  # a timeout, a budget size
    for command, error in blocks:
        result = pytester.runpytest(*command.split()[1:])
        assert error in result.stderr.lines
        assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_budget_limits_from_options_and_ini_and_waiting_lines_reach_the_terminal(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\nnetlab_max_memory = 2G\nnetlab_max_guests = 5\n")
    pytester.makepyfile(
        """
        def test_limits(netlab_config):
            budget = netlab_config.budget
            assert (budget.max_guests, budget.max_memory) == (3, 2048)
            budget.report("netlab: lab-x waiting for 2 guests' room (test line)")
        """
    )
    result = pytester.runpytest("-p", "netlab", "--netlab-max-guests=3")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*netlab: lab-x waiting for 2 guests' room (test line)*"])
