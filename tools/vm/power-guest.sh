# Guest side of tools/power-test, sourced by /init for cowbd.mode=power (busybox sh, PID 1).
# Mounts the ext4 store disk (/dev/vda; made on the first boot), checks the store the last boot
# wrote, and serves stores on 10.0.2.15 until qemu is killed. The host decides pass or fail.
# Command line: cowbd.format=1 (first boot: mkfs), cowbd.verify=NAME (the store the cut hit:
# checked, then served on port 10809, read-only if a new one is written), cowbd.store=NAME (the
# store to write: created unless it is the verified one; served on 10810, or on 10809 if it is
# the verified one), cowbd.chunk=SIZE (for a new store), cowbd.writeback=off|fast.
# Console lines for the host: "COWBD-POWER: fsck rc=N", "COWBD-POWER: check rc=N", "COWBD-POWER: serving".

FORMAT=0 CHUNK=4K WRITEBACK=off VERIFY="" STORE=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        cowbd.format=*) FORMAT=${arg#*=} ;;
        cowbd.verify=*) VERIFY=${arg#*=} ;;
        cowbd.store=*) STORE=${arg#*=} ;;
        cowbd.chunk=*) CHUNK=${arg#*=} ;;
        cowbd.writeback=*) WRITEBACK=${arg#*=} ;;
    esac
done
[ -n "$STORE" ] || fail "cowbd.store is required"
[ -x /usr/bin/cowbd ] || fail "this kit has no cowbd (tools/vm/build-kit packs one when COWBD_VM_COWBD is set)"

load_modules failover net_failover virtio_net
wait_for 30 -b /dev/vda || fail "/dev/vda (store disk) did not appear"
wait_for 30 -b /dev/vdb || fail "/dev/vdb (base disk) did not appear"

# What the guest kernel keeps in its page cache is what a power cut loses. "off": dirty pages stay
# there until an fsync (the most a cut can lose); "fast": they are written back within ~10 ms, so a
# cut also lands between background writeback and fsync.
case "$WRITEBACK" in
    off) expire=360000 interval=0 ;;
    fast) expire=1 interval=1 ;;
    *) fail "bad cowbd.writeback='$WRITEBACK'" ;;
esac
echo "$expire" >/proc/sys/vm/dirty_expire_centisecs
echo "$interval" >/proc/sys/vm/dirty_writeback_centisecs
echo 50 >/proc/sys/vm/dirty_background_ratio
echo 80 >/proc/sys/vm/dirty_ratio

DIR=$MNT/power
if [ "$FORMAT" = 1 ]; then
    step "mkfs.ext4 /dev/vda"
    run mkfs.ext4 -F -q -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda
    run mount -t ext4 /dev/vda "$MNT"
    run mkdir -p "$DIR"
    run sync
else
    # Mounting replays ext4's journal; then the filesystem itself must be clean after the cut.
    step "mount (journal replay) + e2fsck -fn"
    run mount -t ext4 /dev/vda "$MNT"
    run umount "$MNT"
    e2fsck -fn /dev/vda >/tmp/fsck.out 2>&1
    rc=$?
    sed 's/^/COWBD-POWER: fsck: /' /tmp/fsck.out
    echo "COWBD-POWER: fsck rc=$rc"
    run mount -t ext4 /dev/vda "$MNT"
fi
if [ -n "$VERIFY" ]; then
    step "cowbd check $VERIFY"
    cowbd check "$DIR/$VERIFY.cow" >/tmp/check.out 2>&1
    rc=$?
    sed 's/^/COWBD-POWER: check: /' /tmp/check.out
    echo "COWBD-POWER: check rc=$rc"
fi
if [ "$STORE" != "$VERIFY" ]; then
    for old in "$DIR"/*; do  # older stores: only the verified one is still needed
        [ "$old" = "$DIR/$VERIFY.cow" ] || rm -f "$old"
    done
    # No sync after: create makes the store and its name durable itself, and the next boot checks it.
    step "cowbd create $STORE (chunk $CHUNK)"
    run cowbd create "$DIR/$STORE.cow" --base /dev/vdb --chunk-size "$CHUNK"
fi

# User-mode networking: the host reaches 10.0.2.15:10809 and :10810 through forwarded ports.
run ip link set lo up
run ip addr add 10.0.2.15/24 dev eth0
run ip link set eth0 up

serve() {  # serve NAME PORT [OPTION]: in the background; waits until it listens
    step "cowbd serve $1 on port $2 $3"
    cowbd serve "$DIR/$1.cow" --listen "10.0.2.15:$2" --log-level warning $3 >"/tmp/serve-$2.out" 2>&1 &
    pid=$!
    n=200  # it prints its URI once listening
    until grep -q 'nbd://' "/tmp/serve-$2.out" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null && [ "$n" -gt 0 ] ||
            { cat "/tmp/serve-$2.out"; fail "cowbd serve $1 did not start"; }
        n=$((n - 1)); usleep 100000
    done
}
if [ -n "$VERIFY" ] && [ "$STORE" != "$VERIFY" ]; then
    serve "$VERIFY" 10809 --read-only
    serve "$STORE" 10810
else
    serve "$STORE" 10809
fi
echo "COWBD-POWER: serving"
wait  # for the servers; only qemu's death should end this
cat /tmp/serve-*.out
fail "cowbd serve exited"
