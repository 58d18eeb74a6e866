"""How ``vm.ssh()`` runs commands, in real guests: the shell kept open per connection
behaves like ``sh -c`` for each command, and guests run without ASLR unless asked."""

from __future__ import annotations

import threading
import time

import pytest

from pytest_netlab import CommandTimeout, ConfigError, TransferError


@pytest.fixture(scope="module")
def pair(netlab_module):
    plain = netlab_module.vm("plain")
    randomised = netlab_module.vm("randomised", aslr=True)
    netlab_module.start()
    return plain, randomised


def test_output_status_and_streams_come_back_exactly(pair):
    vm, _ = pair
    result = vm.ssh("echo out; echo err >&2; printf 'no newline'; exit 3", check=False)
    assert (result.status, result.stdout, result.stderr) == (3, "out\nno newline", "err\n")
    assert vm.ssh("printf ''").stdout == ""
    big = vm.ssh("head -c 300000 /dev/zero | tr '\\0' x").stdout
    assert big == "x" * 300000


def test_each_command_starts_fresh_like_sh_c(pair):
    vm, _ = pair
    fresh_umask = vm.ssh("umask", stdin="").stdout  # a channel of its own: sh -c umask
    vm.ssh("cd /tmp; export NETLAB_SEEN=1; seen=1; set -e; umask 0002")
    state = vm.ssh('pwd; echo "${NETLAB_SEEN:-unset} ${seen:-unset}"; umask').stdout
    assert state == f"/root\nunset unset\n{fresh_umask}"
    assert vm.ssh("read line; echo \"[$line]\"", check=False).stdout == "[]\n"  # stdin is empty


def test_a_syntax_error_or_a_dead_shell_does_not_break_the_next_command(pair):
    vm, _ = pair
    result = vm.ssh("echo before; if then", check=False)
    assert result.status == 2 and "Syntax error" in result.stderr
    vm.ssh("kill -9 $$", check=False)  # kills the shell that runs the commands
    assert vm.ssh("echo after").stdout == "after\n"


def test_a_timed_out_command_leaves_the_connection_usable(pair):
    vm, _ = pair
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 1 s") as info:
        vm.ssh("echo partial; sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    assert "partial" in str(info.value)
    assert vm.ssh("echo again").stdout == "again\n"


def test_background_processes_neither_block_nor_leak_into_later_output(pair, tmp_path):
    vm, _ = pair
    vm.ssh("rm -f /tmp/go /tmp/late-written")
    # the background process cannot finish before /tmp/go exists: the call returning at all
    # shows it was not held up
    assert vm.ssh(
        "(while [ ! -e /tmp/go ]; do sleep 0.05; done; echo late; touch /tmp/late-written) & echo early"
    ).stdout == "early\n"
    # go on, and see it finish, over SFTP (not the shell whose output is checked): its
    # "late" is written while no command runs on that shell
    (tmp_path / "go").write_text("")
    vm.put(tmp_path / "go", "/tmp/go")

    def late_written() -> bool:
        try:
            vm.get("/tmp/late-written", tmp_path / "late-written")
        except TransferError:
            return False
        return True

    vm.wait_until(late_written, timeout=30, interval=0.1)
    # "late" reached the host before the SFTP answer that saw its file (one SSH transport,
    # in order): the next command drops it
    assert vm.ssh("echo next").stdout == "next\n"


def test_commands_from_several_threads_run_side_by_side(pair):
    vm, _ = pair
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(vm.ssh(f"sleep 1; echo {n}").stdout))
        for n in range(3)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["0\n", "1\n", "2\n"]
    assert time.monotonic() - started < 2.9  # not one after another


def test_stdin_goes_to_the_command(pair):
    vm, _ = pair
    assert vm.ssh("tr a-z A-Z", stdin="hello").stdout == "HELLO"
    assert vm.ssh("wc -c", stdin=b"\x00\xff" * 1000).stdout.strip() == "2000"


def test_aslr_is_off_unless_asked_for(pair):
    plain, randomised = pair
    assert plain.ssh("cat /proc/sys/kernel/randomize_va_space").stdout == "0\n"
    assert randomised.ssh("cat /proc/sys/kernel/randomize_va_space").stdout == "2\n"


def test_aslr_must_be_a_bool(netlab):
    with pytest.raises(ConfigError, match="aslr='yes' of 'h1' is not accepted: give True or False"):
        netlab.vm("h1", aslr="yes")
    assert not netlab.vms
