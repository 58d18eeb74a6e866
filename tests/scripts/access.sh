#!/bin/sh
# What a person does with a running lab, run by tests/test_access.py against a lab of
# tests/scripts/access.toml brought up with `pytest-netlab up --detach`; docs/access.md shows
# these lines. LAB (its name), LABDIR (its directory) and OUT (a scratch directory) are set.
set -eu

# --8<-- [start:ssh]
ssh -F "$LABDIR/ssh_config" h1 ip -br addr show eth0
echo "from the host" > "$OUT/note.txt"
scp -F "$LABDIR/ssh_config" "$OUT/note.txt" r1:/tmp/note.txt
ssh -F "$LABDIR/ssh_config" r1 cat /tmp/note.txt
# --8<-- [end:ssh]

# --8<-- [start:ansible]
ansible -i "$LABDIR/inventory.yml" all -m raw -a 'hostname'
ansible -i "$LABDIR/inventory.yml" routers -m raw -a 'ip -br addr show eth0'
# --8<-- [end:ansible]

# --8<-- [start:cli]
pytest-netlab list
pytest-netlab exec "$LAB" h1 ping -c 1 -W 5 10.41.0.1
pytest-netlab ssh "$LAB" r1 hostname
# --8<-- [end:cli]

# --8<-- [start:capture]
pytest-netlab capture "$LAB" br1 icmp > "$OUT/br1.pcap" 2> "$OUT/capture.log" &
capture=$!
# tcpdump says when it listens
until grep -q "listening on" "$OUT/capture.log"; do kill -0 "$capture" || exit 1; sleep 0.1; done
pytest-netlab exec "$LAB" h1 ping -c 2 -W 5 10.41.0.1 > /dev/null
kill "$capture"; wait "$capture" || true
tcpdump -n -r "$OUT/br1.pcap" 2> /dev/null
# --8<-- [end:capture]
