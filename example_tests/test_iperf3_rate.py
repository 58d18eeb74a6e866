"""iperf3 between two guests: the throughput measured before and after
``impair(rate_kbit=...)``, which must then be within 25 % of the limit, wherever
``where="auto"`` put the shaper (on the TAP it shapes what goes to the guest, in the
guest what comes from it). See docs/scenarios/iperf3-rate.md."""

from __future__ import annotations

import json

from guest_packages import PACKAGES

LIMIT_KBIT = 20_000  # far below what two guests reach under TCG (hundreds of Mbit/s)


# --8<-- [start:measure]
def throughput_kbit(client, server: str, *, reverse: bool = False) -> float:
    """TCP throughput from *client* to *server* (with *reverse*, from the server to the
    client) in kbit/s, as iperf3's receiver counted it: 3 s, the first second left out
    (slow start)."""
    argv = f"iperf3 -c {server} -t 3 -O 1 -J" + (" -R" if reverse else "")
    # again if it fails: the server may still be closing the last test ("busy")
    client.wait_until(f"{argv} > /tmp/iperf3.json", timeout=60)
    report = json.loads(client.ssh("cat /tmp/iperf3.json").stdout)
    return report["end"]["sum_received"]["bits_per_second"] / 1000
# --8<-- [end:measure]


def test_a_rate_limit_holds_the_throughput_to_it(netlab) -> None:
    # --8<-- [start:lab]
    image = netlab.image(packages=PACKAGES)
    lan = netlab.bridge("lan", subnet="10.4.0.0/24")
    h1 = netlab.vm("h1", nics=[lan], image=image)
    h2 = netlab.vm("h2", nics=[lan], image=image)
    netlab.start()
    h2.daemon("iperf3 -s", name="iperf3")
    h2.wait_until("ss -Hltn 'sport = :5201' | grep -q LISTEN")
    free = throughput_kbit(h1, "h2")
    assert free > 2 * LIMIT_KBIT  # the guests are not the bottleneck below the limit
    # --8<-- [end:lab]

    # --8<-- [start:impair]
    shaper = h2.impair("eth0", rate_kbit=LIMIT_KBIT)  # where="auto"
    # on h2's TAP it limits what is sent to h2, in h2 what h2 sends: measure that way
    shaped = throughput_kbit(h1, "h2", reverse=shaper.where == "guest")
    assert abs(shaped - LIMIT_KBIT) <= 0.25 * LIMIT_KBIT, (shaper.where, shaped)

    in_guest = h2.impair("eth0", rate_kbit=LIMIT_KBIT, where="guest")  # netem in h2
    shaped = throughput_kbit(h1, "h2", reverse=True)
    assert abs(shaped - LIMIT_KBIT) <= 0.25 * LIMIT_KBIT, (in_guest.where, shaped)

    h2.impair("eth0")  # removed: the throughput is free again
    assert throughput_kbit(h1, "h2", reverse=shaper.where == "guest") > 2 * LIMIT_KBIT
    # --8<-- [end:impair]
