# Shared by tools/demo, tools/test and bench/run: installs the Debian packages cowbd's build,
# tests and benchmark use, when missing. Under CI a package that cannot be installed fails the run.

# Build: C libraries behind the system-library targets.
COWBD_BUILD_PACKAGES="pkg-config libnbd-dev liblz4-dev libxxhash-dev libzstd-dev libgnutls28-dev"
# Tests: real NBD clients and peers, the kernel path, and the VM kit.
COWBD_TEST_PACKAGES="libnbd-bin nbdkit qemu-utils python3 python3-libnbd e2fsprogs fuse3 util-linux
  qemu-system-x86 linux-image-cloud-amd64 busybox-static nbd-client socat xxd dmsetup gnutls-bin"
# The Debian package (tools/package, tools/test-package): dpkg-shlibdeps, strip, man, and a
# parser of Debian's copyright format.
COWBD_PACKAGE_PACKAGES="dpkg-dev binutils man-db python3-debian"
# tools/test-ceph: a one-node cluster, and qemu's rbd driver for qemu-nbd.
COWBD_CEPH_PACKAGES="ceph-mon ceph-osd ceph-common qemu-block-extra uuid-runtime"
# Benchmark: the load generator and the chart.
COWBD_BENCH_PACKAGES="fio python3-matplotlib"

# ensure_packages PACKAGE...: installs the missing ones with apt-get (root only).
ensure_packages() {
    local missing=()
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})" >&2
        return 1
    fi
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
}

# require_tool NAME: a tool the tests need. Under CI its absence fails; elsewhere it skips (77).
require_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ -n "${CI:-}" ]; then
        echo "required tool '$1' is missing (CI: failing, not skipping)" >&2
        exit 1
    fi
    echo "skipping: '$1' is not installed" >&2
    exit 77
}
