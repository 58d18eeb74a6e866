#!/bin/bash
# Document 000, "Script for Three Machines", by hand: h1 -- br1 -- rt2 -- br2 -- h2,
# addresses as in its interface files, forwarding on in rt2, a ping each way, then the
# cleanup script. See handmade_common.sh.
. "$(dirname "$0")/handmade_common.sh"

bridge br1
bridge br2
tap vport11 br1
tap vport12 br1
tap vport21 br2
tap vport22 br2
start_vm h1 11 vport11:12:34:56:AB:CD:7B
start_vm rt2 12 vport12:12:34:56:AB:CD:74 vport22:12:34:56:AB:CD:75
start_vm h2 21 vport21:12:34:56:AB:CD:7C
mark spawned
wait_ssh 11
wait_ssh 12
wait_ssh 21
mark ssh_up
on 11 "ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up && ip route add default via 10.20.10.2"
on 12 "ip addr add 10.20.10.2/24 dev eth0 && ip addr add 10.20.20.2/24 dev eth1 && ip link set eth0 up && ip link set eth1 up"
on 21 "ip addr add 10.20.20.1/24 dev eth0 && ip link set eth0 up && ip route add default via 10.20.20.2"
on 12 "sysctl -w net.ipv4.ip_forward=1" > /dev/null
on 11 "ping -n -c 1 -W 2 10.20.20.1" > /dev/null
on 21 "ping -n -c 1 -W 2 10.20.10.1" > /dev/null
finish
