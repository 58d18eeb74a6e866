"""pytest glue: options, the header line, and the ``netlab`` fixture.

The work is done in plain modules that know nothing of pytest (:mod:`.lab`,
:mod:`.session`, :mod:`.options` for reading and checking the options declared here);
this file only connects them to pytest.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .constants import ACCEL_CHOICES, BOOT_MODES, PCAP_MODES
from .errors import NetlabError
from .keep import DEFAULT_KEEP_TIMEOUT, Hold, kept_dir, open_terminal
from .options import KeepPolicy, read_options
from .owner import sigterm_like_ctrl_c
from .session import LabFactory, NetlabSession, runtime_base
from .untrusted import DEFAULT_OUTPUT_LIMIT, printable

if TYPE_CHECKING:
    from .lab import Lab

# the lab's own modules (QEMU, SSH, netlink, pcap) are imported by the hooks and fixtures
# that use them: this module is loaded in every run of a project with pytest-netlab

log = logging.getLogger(__name__)

_SESSION_KEY = pytest.StashKey[NetlabSession]()
_FAILED_KEY = pytest.StashKey[bool]()
_KEEP_KEY = pytest.StashKey[KeepPolicy]()
_SIGTERM_KEY = pytest.StashKey[Callable[[int, object], None]]()
_LEFTOVERS_KEY = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netlab", "pytest-netlab: network labs of QEMU guests")
    with_ini = functools.partial(_option_with_ini, group, parser)
    with_ini(
        "accel", "auto", choices=ACCEL_CHOICES,
        help="accelerator for guests: auto (KVM if a guest boots under it, else TCG), kvm or tcg",
        ini_help="accelerator: auto, kvm or tcg",
    )
    with_ini(
        "boot", "snapshot", choices=BOOT_MODES,
        help="how default-image guests start: snapshot (resumed from a saved boot, made once "
        "per device layout and cached) or cold (a full kernel boot each time)",
        ini_help="how guests start: snapshot or cold",
    )
    with_ini(
        "boot-timeout", "120", type=float, metavar="SECONDS",
        help="how long a guest may take to answer SSH", ini_help="seconds a guest may take to answer SSH",
    )
    with_ini(
        "command-timeout", "60", type=float, metavar="SECONDS",
        help="how long vm.ssh() and vm.console_run() wait for a command given no timeout=",
        ini_help="default timeout of vm.ssh() and vm.console_run() in seconds",
    )
    group.addoption(
        "--netlab-artifacts", default=None, metavar="DIR",
        help="where the evidence of failed lab tests goes, a directory per test id "
        "(default: netlab-artifacts inside the test's tmp_path)",
    )
    group.addoption(
        "--netlab-pcap", nargs="?", const="on-failure", default="off", choices=PCAP_MODES,
        help="record every bridge of every lab to pcap files, kept with the evidence of a "
        "failed test (on-failure, the value when none is given) or of every test (always); "
        "write --netlab-pcap=MODE when test paths follow it (default: off)",
    )
    group.addoption(
        "--netlab-keep-on-fail", action="store_true", default=False,
        help="keep a failed test's labs running, print how to reach each guest (also written "
        "to a file in the kept/ directory of the runtime dir, /run/netlab as root), and go "
        "on to tear them down on Enter, when that file is deleted, or after "
        "--netlab-keep-timeout (default: off)",
    )
    group.addoption(
        "--netlab-pause", action="store_true", default=False,
        help="the same after every test that has a lab, failed or not (default: off)",
    )
    with_ini(
        "keep-timeout", f"{DEFAULT_KEEP_TIMEOUT:g}", type=float, metavar="SECONDS",
        help="how long a kept or paused lab stays up without Enter",
        ini_help="seconds a kept or paused lab stays up without Enter",
    )
    with_ini(
        "packages", "", shown="none: the default image", metavar="PKG,PKG",
        help="Debian packages every guest without image= gets: a package image of the default "
        "harness plus these, built once and cached",
        ini_help="Debian packages of every guest's image, comma separated",
    )
    with_ini(
        "max-guests", "", shown="4 per CPU", metavar="N",
        help="guests booting at once on this machine, over every pytest process and pytest-netlab "
        "up; a lab waits for room",
        ini_help="guests booting at once, machine-wide",
    )
    with_ini(
        "max-memory", "", shown="the free memory less a reserve", metavar="MIB",
        help="memory of running guests on this machine (QEMU's own included), in MiB or with G "
        "(e.g. 8G); a lab waits for room",
        ini_help="MiB of running guests, machine-wide",
    )
    with_ini(
        "output-limit", f"{DEFAULT_OUTPUT_LIMIT // 2**20}M", metavar="BYTES",
        help="bytes kept of each stream of a guest command's output (vm.ssh()) and of each "
        "guest's console.log; the rest is cut with a '[... N bytes truncated]' note; K, M or G allowed",
        ini_help="bytes kept of each command output stream and console log",
    )


def _option_with_ini(
    group: pytest.OptionGroup, parser: pytest.Parser, name: str, ini_default: str, *,
    help: str, ini_help: str, shown: str | None = None, **kwargs: Any,
) -> None:
    """--netlab-NAME and the ini value netlab_NAME that stands for it when it is not given
    (see :func:`.options.read_options`); both help texts end with what applies when
    neither is given: *shown*, else *ini_default*."""
    ini = "netlab_" + name.replace("-", "_")
    shown = ini_default if shown is None else shown
    group.addoption(
        f"--netlab-{name}", default=None, help=f"{help} (default: ini {ini}, else {shown})", **kwargs
    )
    parser.addini(ini, f"{ini_help} (default {shown})", default=ini_default)


def pytest_configure(config: pytest.Config) -> None:
    try:
        options = read_options(config)
    except NetlabError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not hasattr(config, "workerinput") or _remote_worker(config):
        # the xdist controller or a plain run: workers' labs are not made yet, and every
        # other live run keeps its resources (their owners are alive). A worker started
        # over ssh (--tx ssh=) may be on a machine of its own: it cleans there
        config.stash[_LEFTOVERS_KEY] = _remove_leftovers()
    config.stash[_KEEP_KEY] = options.keep
    config.stash[_SESSION_KEY] = options.session(
        report=lambda line: _report_line(config, line), progress=functools.partial(_show_progress, config),
    )
    config.addinivalue_line("markers", "netlab: the test builds a network lab of QEMU guests")
    _terminate_like_ctrl_c(config)


def _show_progress(config: pytest.Config, message: str) -> None:
    """A step of a long build (a package image), on the terminal even while output is
    captured; xdist workers have no terminal: the log has it."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        reporter.write_line(f"netlab: {message}")


def _terminate_like_ctrl_c(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled) tears the labs down as Ctrl-C does: pytest's
    KeyboardInterrupt path runs the fixtures' teardown. A handler someone else set is
    left alone; ours is taken back at the end of the run."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        handler = sigterm_like_ctrl_c(os.getpid())
        signal.signal(signal.SIGTERM, handler)
        config.stash[_SIGTERM_KEY] = handler


# the key xdist's controller sets in each worker's workerinput: True for a worker it
# started through a gateway other than popen (ssh=, socket=): possibly another machine
_REMOTE_WORKER = "netlab_remote_worker"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist's controller, before it starts a worker: tell it how it was started."""
    node.workerinput[_REMOTE_WORKER] = not node.gateway.spec.popen


def _remote_worker(config: pytest.Config) -> bool:
    workerinput = getattr(config, "workerinput", None)
    return bool(workerinput and workerinput.get(_REMOTE_WORKER))


def _every_worker_remote(config: pytest.Config) -> bool:
    """An xdist controller none of whose workers is a popen of this machine."""
    if hasattr(config, "workerinput") or config.getoption("dist", "no") == "no":
        return False
    import execnet

    specs = [spec.split("*", 1)[1] if spec.split("*", 1)[0].isdigit() else spec
             for spec in config.getoption("tx", None) or []]
    return bool(specs) and not any(execnet.XSpec(spec).popen for spec in specs)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A worker on another machine shows its own header line (the controller's is about
    the controller's machine), on stderr, which its gateway carries back to the controller."""
    config = session.config
    if _remote_worker(config):
        sys.stderr.write(f"{_where(config)}: {pytest_report_header(config)[0].removeprefix('netlab: ')}\n")
        sys.stderr.flush()


def _where(config: pytest.Config) -> str:
    """How this process's lines begin: ``netlab on gw0 (lab2)`` on a remote worker, else
    ``netlab``."""
    if not _remote_worker(config):
        return "netlab"
    return f"netlab on {config.workerinput['workerid']} ({socket.gethostname()})"  # type: ignore[attr-defined]


def _report_line(config: pytest.Config, line: str) -> None:
    """A line for the person watching the run (a lab waiting for room), past capture."""
    log.warning("%s", line)
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if hasattr(config, "workerinput"):  # the controller reads the workers' stdout
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        else:
            config.get_terminal_writer().line(line)


def _remove_leftovers() -> list[str]:
    """What was removed, for the report header (a warning logged this early is not shown)."""
    from .cleanup import remove_leftovers
    from .image import cache_path, cache_root

    try:
        # a run in a project that never made a lab makes no cache (and checks none)
        made = (cache_path() / "templates").is_dir()
        report = remove_leftovers(runtime_base(), template_dir=cache_root() / "templates" if made else None)
    except (OSError, NetlabError) as exc:  # no root: the labs will say so with their own error
        log.warning("netlab: cleaning leftovers of dead runs failed: %s", exc)
        return [f"cleaning leftovers of dead runs failed: {exc}"]
    for line in report.lines():
        log.warning("netlab: leftover of a dead run: %s", line)
    return [f"leftover of a dead run: {line}" for line in report.lines()]


def pytest_unconfigure(config: pytest.Config) -> None:
    handler = config.stash.get(_SIGTERM_KEY, None)
    if handler is not None and signal.getsignal(signal.SIGTERM) is handler:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if _every_worker_remote(config):  # this machine runs no lab: no accelerator probe here
        return ["netlab: every worker is started over --tx (ssh=...): each shows its own line"]
    session = config.stash[_SESSION_KEY]
    removed = [f"netlab: {line}" for line in config.stash.get(_LEFTOVERS_KEY, [])]
    try:
        return [f"netlab: {session.describe()}", *removed]
    except NetlabError as exc:
        return [f"netlab: not usable: {exc}", *removed]


@pytest.fixture(scope="session")
def netlab_config(pytestconfig: pytest.Config) -> NetlabSession:
    """What every lab of this test process shares (image, accelerator, SSH key)."""
    return pytestconfig.stash[_SESSION_KEY]


def _artifacts_dir(item: pytest.Item, session: NetlabSession, labs: list[Lab]) -> Path:
    from .artifacts import sanitize_nodeid

    if session.artifacts is not None:
        return session.artifacts / sanitize_nodeid(item.nodeid)
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if isinstance(tmp_path, Path):
        return tmp_path / "netlab-artifacts"
    return labs[0].workdir / "artifacts"  # a lab made without the fixture


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed lab test gets its evidence (captured now, before teardown) as report
    sections and files."""
    report = yield
    if report.when in ("setup", "call") and report.failed:
        item.stash[_FAILED_KEY] = True
        from . import artifacts
        from .lab import open_labs

        labs = [lab for lab in open_labs() if lab.namespace.created]
        session = item.config.stash.get(_SESSION_KEY, None)
        if labs and session is not None:
            try:
                host = socket.gethostname() if _remote_worker(item.config) else None
                evidence = artifacts.collect(labs, _artifacts_dir(item, session, labs), host)
                # guest text, shown on the terminal: no escape sequence gets through
                report.sections.extend((title, printable(text)) for title, text in evidence.sections)
            except Exception as exc:  # evidence must never mask the failure
                log.exception("netlab: capturing evidence failed")
                report.sections.append(("netlab artifacts", printable(f"capturing evidence failed: {exc!r}")))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """With --netlab-keep-on-fail (a failed test) or --netlab-pause, the test's labs stay
    up, before any fixture is torn down, until the person looking at them goes on."""
    policy = item.config.stash.get(_KEEP_KEY, None)
    failed = item.stash.get(_FAILED_KEY, False)
    if policy is not None and (policy.pause or (policy.on_fail and failed)):
        from .lab import open_labs

        labs = [lab for lab in open_labs() if lab.namespace.created]
        if labs:
            try:
                _hold(item, labs, policy.timeout, "failed" if failed else "passed")
            except Exception:  # holding must never keep the labs from their teardown
                log.exception("netlab: keeping the labs of %s failed", item.nodeid)
    return (yield)


def _hold(item: pytest.Item, labs: list[Lab], timeout: float, outcome: str) -> None:
    from . import access

    config = item.config
    worker = hasattr(config, "workerinput")  # an xdist worker has no terminal of its own
    terminal_fd = None if worker else open_terminal()
    try:
        body = f"netlab: {item.nodeid} {outcome}; its labs are kept up:\n" + "".join(
            access.describe(lab) for lab in labs
        )
        hold = Hold.write(
            kept_dir(runtime_base()), [lab.name for lab in labs], body, timeout,
            terminal=terminal_fd is not None, workdirs=[lab.workdir for lab in labs],
        )
        capman = config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            if worker:  # the controller reads the workers' stdout; their stderr is the user's
                # a worker over ssh: the labs are on its machine, which the text names
                where = f"{_where(config)}:\n" if _remote_worker(config) else ""
                sys.stderr.write("\n" + where + hold.text)
                sys.stderr.flush()
            else:
                writer = config.get_terminal_writer()
                writer.line()
                writer.write(hold.text, flush=True)
            reason = hold.wait(terminal_fd)
        log.info("netlab: holding %s ended (%s)", ", ".join(lab.name for lab in labs), reason)
    finally:
        if terminal_fd is not None:
            os.close(terminal_fd)


@pytest.fixture
def netlab(
    netlab_config: NetlabSession, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Lab]:
    """An isolated network lab for one test, torn down after it, pass or fail."""
    lab = netlab_config.new_lab(tmp_path / "netlab")
    try:
        yield lab
    finally:
        lab.close()
        if netlab_config.pcap == "on-failure" and not request.node.stash.get(_FAILED_KEY, False):
            shutil.rmtree(lab.pcap_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def netlab_factory(
    netlab_config: NetlabSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabFactory]:
    """Makes labs for fixtures of wider scope: ``with netlab_factory() as lab: ...``.

    A lab is torn down when its ``with`` block ends; any still open at the end of the
    session is torn down then.
    """
    factory = LabFactory(netlab_config, tmp_path_factory.mktemp("netlab-shared"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def netlab_module(netlab_factory: LabFactory) -> Iterator[Lab]:
    """One lab shared by the tests of a module, torn down after the module's last test."""
    with netlab_factory() as lab:
        yield lab
