# Guest side of tools/logwrites-test, sourced by /init for cowbd.mode=logwrites (busybox sh, PID 1).
# Puts a dm-log-writes device over the data disk /dev/vda (log on /dev/vdc), makes ext4 on it, copies
# the base (/dev/vdb) into it as base.img, creates lw/disk.cow over it (base path relative, so the host
# can check the store next to a copy of the base) and serves it on 10.0.2.15:10809. On 10810 a control
# connection takes lines "hello" (answers "hello": the host retries until the listener is up), "mark NAME" (answers "ok NAME" once `dmsetup message log 0 mark NAME` ran) and
# "end" (stops the server, unmounts, removes the device so the log's super block is final; answers
# "done" and powers off). Console lines for the host: "COWBD-LOGWRITES: serving".

[ -x /usr/bin/cowbd ] || fail "this kit has no cowbd (tools/vm/build-kit packs one when COWBD_VM_COWBD is set)"
for m in failover net_failover virtio_net dm_mod dm_log_writes; do
    ko=/lib/modules/$m.ko
    [ -f "$ko" ] || continue
    insmod "$ko" 2>/tmp/insmod.err || {
        grep -q 'File exists' /tmp/insmod.err || { cat /tmp/insmod.err; fail "insmod $m failed"; }
    }
done
for disk in vda vdb vdc; do
    wait_for 30 -b /dev/$disk || fail "/dev/$disk did not appear"
done
# Dirty pages stay in the page cache until an fsync: the log then holds what cowbd made durable.
echo 360000 >/proc/sys/vm/dirty_expire_centisecs
echo 0 >/proc/sys/vm/dirty_writeback_centisecs

SECTORS=$(blockdev --getsz /dev/vda) || fail "blockdev /dev/vda"
step "dmsetup create log: 0 $SECTORS log-writes /dev/vda /dev/vdc"
run dmsetup create log --noudevsync --table "0 $SECTORS log-writes /dev/vda /dev/vdc"
wait_for 10 -b /dev/mapper/log || run dmsetup mknodes log
run dmsetup message log 0 mark mkfs
run mkfs.ext4 -F -q -b 4096 -E lazy_itable_init=0,lazy_journal_init=0,nodiscard /dev/mapper/log
run mount -t ext4 /dev/mapper/log "$MNT"
DIR=$MNT/lw
run mkdir -p "$DIR"
run dd if=/dev/vdb of="$DIR/base.img" bs=1M 2>/dev/null
cd "$DIR" || fail "cd $DIR"
run cowbd create disk.cow --base base.img --chunk-size 4K
run sync
cd /

run ip link set lo up
run ip addr add 10.0.2.15/24 dev eth0
run ip link set eth0 up
step "cowbd serve disk.cow on port 10809"
cowbd serve "$DIR/disk.cow" --listen 10.0.2.15:10809 --log-level warning >/tmp/serve.out 2>&1 &
SERVER=$!
n=200
until grep -q 'nbd://' /tmp/serve.out 2>/dev/null; do
    kill -0 "$SERVER" 2>/dev/null && [ "$n" -gt 0 ] || { cat /tmp/serve.out; fail "cowbd serve did not start"; }
    n=$((n - 1)); usleep 100000
done

cat >/tmp/control.sh <<EOF
while read -r command name; do
    case "\$command" in
        hello) echo hello ;;
        mark) dmsetup message log 0 mark "\$name" && echo "ok \$name" || echo "failed \$name" ;;
        end)
            kill $SERVER; while kill -0 $SERVER 2>/dev/null; do usleep 100000; done
            umount $MNT && dmsetup remove log && sync && echo done || echo failed
            exit 0 ;;
        *) echo "unknown \$command" ;;
    esac
done
EOF
echo "COWBD-LOGWRITES: serving"
socat TCP-LISTEN:10810,bind=10.0.2.15,reuseaddr EXEC:"sh /tmp/control.sh" || fail "socat exited $?"
cat /tmp/serve.out
echo "COWBD-VM-RESULT: PASS"
finish
