#!/bin/bash
# Document 000, "Script for Two Machines", by hand: br1, vport11/vport12, h1 and h2,
# 10.10.10.2 and .3, a ping each way, then the cleanup script. See handmade_common.sh.
. "$(dirname "$0")/handmade_common.sh"

bridge br1
tap vport11 br1
tap vport12 br1
start_vm h1 11 vport11:12:34:56:AB:CD:7B
start_vm h2 12 vport12:12:34:56:AB:CD:7C
mark spawned
wait_ssh 11
wait_ssh 12
mark ssh_up
on 11 "ip addr add 10.10.10.2/24 dev eth0 && ip link set eth0 up"
on 12 "ip addr add 10.10.10.3/24 dev eth0 && ip link set eth0 up"
on 11 "ping -n -c 1 -W 2 10.10.10.3" > /dev/null
on 12 "ping -n -c 1 -W 2 10.10.10.2" > /dev/null
finish
