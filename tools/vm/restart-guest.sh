# Guest side of tools/restart-test, sourced by /init for cowbd.mode=restart (busybox sh, PID 1).
# /dev/nbd0 keeps an ext4 filesystem mounted while the host restarts `cowbd serve` under it,
# twice (SIGTERM, then SIGKILL), with writes issued while no server runs. The guest reaches the
# host's 127.0.0.1:PORT as 10.0.2.2:PORT (user-mode networking).
# Command line: cowbd.export=NAME cowbd.port=PORT cowbd.restarts=term,kill (one round each).
# Host <-> guest: "COWBD-RESTART: ready N KIND" on the console (everything synced) asks the host
# to stop the server; it answers "stopped N" on the virtio-serial port "ctl" once the server has
# exited, and starts the next one after "COWBD-RESTART: writing N". "COWBD-RESTART: sha256 HASH
# NAME" lines list every file written, for the host to check in the store after the guest ends.

PORT="" RESTARTS=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        cowbd.port=*) PORT=${arg#*=} ;;
        cowbd.restarts=*) RESTARTS=${arg#*=} ;;
    esac
done
[ -n "$EXPORT" ] && [ -n "$PORT" ] && [ -n "$RESTARTS" ] || fail "cowbd.export, cowbd.port and cowbd.restarts are required"
DEV=/dev/nbd0
DATA_DIR=$MNT/restart

load_modules failover net_failover virtio_net
wait_for 10 -b "$DEV" || fail "$DEV did not appear"
n=100
while [ ! -e /sys/class/net/eth0 ] && [ "$n" -gt 0 ]; do n=$((n - 1)); usleep 100000; done
run ip link set lo up
run ip addr add 10.0.2.15/24 dev eth0
run ip link set eth0 up

ctl=""
for f in /sys/class/virtio-ports/*/name; do
    [ -f "$f" ] && [ "$(cat "$f")" = ctl ] && ctl=/dev/$(basename "$(dirname "$f")")
done
[ -n "$ctl" ] && wait_for 10 -c "$ctl" || fail "no virtio-serial port named ctl"
exec 3<"$ctl"  # open from now on: qemu passes the host's lines only to an open port

# /dev/nbd0 is attached by qemu-nbd: the kernel's connection is to qemu-nbd here in the guest,
# and qemu's NBD client behind it reconnects to the server; with reconnect-delay, a request
# waits up to 60 s for the new server instead of failing. (nbd-client 3.24 cannot do this on a
# 6.1 kernel: with netlink it never reconnects; with -nonetlink -persist, NBD_DO_IT returns 0
# when the server goes away and nbd-client exits, and a socket given again through the ioctl
# interface to a device still mounted leaves half the requests failing with EIO.)
IMAGE="driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=10.0.2.2"
IMAGE="$IMAGE,file.server.port=$PORT,file.export=$EXPORT,file.reconnect-delay=60"
run mkdir -p /var/lock  # qemu-nbd's socket for the kernel: /var/lock/qemu-nbd-nbd0
step "qemu-nbd --connect $DEV --image-opts $IMAGE"
qemu-nbd --connect "$DEV" --image-opts "$IMAGE" --cache=none >/tmp/qemu-nbd.log 2>&1 &
CLIENT_PID=$!
n=600
until [ -s /sys/block/nbd0/pid ] && [ "$(cat /sys/block/nbd0/size 2>/dev/null || echo 0)" != 0 ]; do
    kill -0 "$CLIENT_PID" 2>/dev/null || { cat /tmp/qemu-nbd.log; fail "qemu-nbd exited"; }
    [ "$n" -gt 0 ] || { cat /tmp/qemu-nbd.log; fail "qemu-nbd did not attach $DEV in 60 s"; }
    n=$((n - 1)); usleep 100000
done
step "attached: $(($(cat /sys/block/nbd0/size) / 2048)) MiB"

write_round() {  # write_round NAME: files of this round, synced (FLUSH answered)
    run dd if=/dev/urandom of="$DATA_DIR/$1.bin" bs=64k count=48 2>/dev/null
    run dd if=/dev/urandom of="$DATA_DIR/$1-small.bin" bs=1k count=37 2>/dev/null
    run sync
    (cd "$DATA_DIR" && sha256sum "$1.bin" "$1-small.bin" >>SHA256SUMS) || fail "sha256sum"
    run sync
}

verify_all() {  # every file written so far, read from the server (not the page cache)
    sync
    echo 3 >/proc/sys/vm/drop_caches
    (cd "$DATA_DIR" && sha256sum -c SHA256SUMS) || fail "sha256 mismatch after $1"
    sync  # the reads' atime updates
}

step "mkfs.ext4 + mount + write round 0"
run mkfs.ext4 -F -q -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$DEV"
run mount -t ext4 "$DEV" "$MNT"
run mkdir -p "$DATA_DIR"
write_round round0
verify_all "the first writes"

round=0
for kind in $(echo "$RESTARTS" | tr ',' ' '); do
    round=$((round + 1))
    echo "COWBD-RESTART: ready $round $kind"
    answer=""
    read -r -t 300 answer <&3 || fail "no answer from the host for restart $round"
    [ "$answer" = "stopped $round" ] || fail "unexpected answer from the host: '$answer'"
    # No server now: these writes and the sync's FLUSH wait in qemu for the next one.
    step "server stopped ($kind): writing round $round"
    write_round "round$round" &
    writer=$!
    echo "COWBD-RESTART: writing $round"
    n=1200
    while kill -0 "$writer" 2>/dev/null && [ "$n" -gt 0 ]; do n=$((n - 1)); usleep 100000; done
    kill -0 "$writer" 2>/dev/null && fail "round $round's writes did not finish within 120 s"
    wait "$writer" || fail "round $round's writes failed"
    step "round $round written through the new server"
    verify_all "restart $round ($kind)"
done

step "umount + e2fsck -fn"
run umount "$MNT"
drop_caches
e2fsck -fn "$DEV" || fail "e2fsck -fn reported problems (rc=$?)"
run mount -t ext4 -o ro "$DEV" "$MNT"
sed 's/^/COWBD-RESTART: sha256 /' "$DATA_DIR/SHA256SUMS"
run umount "$MNT"

step "qemu-nbd --disconnect $DEV"
qemu-nbd --disconnect "$DEV" >/dev/null || fail "qemu-nbd --disconnect failed"
n=100
while kill -0 "$CLIENT_PID" 2>/dev/null && [ "$n" -gt 0 ]; do n=$((n - 1)); usleep 100000; done
kill -0 "$CLIENT_PID" 2>/dev/null && fail "qemu-nbd did not exit after --disconnect"
sed 's/^/COWBD-RESTART: qemu-nbd: /' /tmp/qemu-nbd.log
echo "COWBD-VM-RESULT: PASS"
finish
