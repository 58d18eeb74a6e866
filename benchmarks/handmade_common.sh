# Shared by handmade_two_machines.sh and handmade_three_machines.sh: the documents'
# commands (document 000, "practical scripts"), run in a network namespace of their own
# so that nothing touches the host's links. Sourced, not run.
#
# Needs: KERNEL, INITRD, CMDLINE (the guest image's kernel, initramfs and command line),
# SSH_KEY (a private key file) and SSH_PUB ("ssh-ed25519 AAAA...") in the environment.
set -eu
: "${KERNEL:?} ${INITRD:?} ${CMDLINE:?} ${SSH_KEY:?} ${SSH_PUB:?}"
NS=handmade-$$
WORK=$(mktemp -d /tmp/handmade-XXXXXX)
T0=$(date +%s%N)

# "T <what> <milliseconds since the script started>" lines are what the benchmark reads
mark() { echo "T $1 $((($(date +%s%N) - T0) / 1000000))"; }
in_ns() { ip netns exec "$NS" "$@"; }

cleanup() {
	# the cleanup script: stop the guests, detach and delete the TAPs and bridges
	pids=$(cat "$WORK"/*.pid 2> /dev/null || true)
	for pid in $pids; do kill "$pid" 2> /dev/null || true; done
	for pid in $pids; do
		while kill -0 "$pid" 2> /dev/null; do sleep 0.01; done
	done
	for tap in $TAPS; do
		in_ns ip link set dev "$tap" nomaster 2> /dev/null || true
		in_ns ip tuntap del mode tap "$tap" 2> /dev/null || true
	done
	for br in $BRIDGES; do
		in_ns ip link del "$br" 2> /dev/null || true
	done
	ip netns del "$NS" 2> /dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

finish() { # the cleanup script, timed, once the scenario is done
	mark scenario_done
	cleanup
	trap - EXIT
	mark cleaned_up
}

ip netns add "$NS"
in_ns ip link set lo up

bridge() {
	in_ns ip link add name "$1" type bridge
	in_ns ip link set "$1" up
	BRIDGES="${BRIDGES:-} $1"
}

tap() { # tap NAME BRIDGE
	in_ns ip tuntap add mode tap "$1"
	in_ns ip link set "$1" up
	in_ns ip link set "$1" master "$2"
	TAPS="${TAPS:-} $1"
}

# start_vm NAME ID TAP:MAC [TAP:MAC...]: as the documents do, plus a user-mode NIC
# with SSH forwarded (document 003, hostfwd) on the namespace's own loopback
start_vm() {
	name=$1 id=$2 port=22$2
	shift 2
	nics= i=0
	for nic in "$@"; do
		nics="$nics -netdev tap,id=net$i,ifname=${nic%%:*},script=no,downscript=no"
		nics="$nics -device virtio-net-pci,netdev=net$i,mac=${nic#*:}"
		i=$((i + 1))
	done
	# shellcheck disable=SC2086 # $nics is a list of options
	in_ns qemu-system-x86_64 -accel tcg -cpu max -m 128 -nodefaults -display none \
		-kernel "$KERNEL" -initrd "$INITRD" \
		-append "$CMDLINE netlab.name=$name netlab.mgmt=52:54:00:12:34:$id netlab.mgmt_addr=10.0.2.15/24 netlab.keytype=${SSH_PUB%% *} netlab.key=${SSH_PUB#* }" \
		$nics \
		-netdev "user,id=mgmt,hostfwd=tcp:127.0.0.1:$port-:22" \
		-device "virtio-net-pci,netdev=mgmt,mac=52:54:00:12:34:$id" \
		-serial "file:$WORK/$name.console" \
		-name "$name" -daemonize -pidfile "$WORK/$name.pid"
}

on() { # on ID COMMAND: a command in a guest (SSH port 22ID), the way people type it
	port=22$1
	shift
	in_ns ssh -q -i "$SSH_KEY" -p "$port" -o StrictHostKeyChecking=no \
		-o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 -o BatchMode=yes \
		root@127.0.0.1 "$@"
}

wait_ssh() { # a plain loop until the guest answers
	tries=0
	until on "$1" true 2> /dev/null; do
		tries=$((tries + 1))
		[ "$tries" -lt 600 ] || { echo "guest on port $1 never answered SSH" >&2; exit 1; }
		sleep 0.1
	done
}
