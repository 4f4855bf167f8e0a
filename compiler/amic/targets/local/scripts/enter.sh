# shellcheck shell=sh
# The namespace script (rootfs.chroot_argv): mount the overlay and the API filesystems,
# then enter the root for good (confine.py: pivot_root, the host's tree detached, a
# container's capabilities). Runs as PID 1 of a fresh PID namespace (unshare --pid
# --fork), so every process the command starts dies with it.
#   $1 merged  the overlay's mount point     $3 work    the overlay's workdir
#   $2 upper   the writable upper directory  $4 lowers  lowerdir= (top-most first)
#   $5 python  the interpreter for $6        $6 confine confine.py
#   $7...      the command to run in the root
set -eu
merged=$1; upper=$2; work=$3; lowers=$4; python=$5; confine=$6; shift 6
mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount -t sysfs -o ro sysfs "$merged/sys" 2>/dev/null || true
# What the host's kernel could be changed or read through, hidden or read-only (Docker's
# masked and read-only paths); without CAP_SYS_ADMIN the command cannot undo a mount.
for f in sysrq-trigger kcore keys timer_list sched_debug latency_stats kallsyms; do
    if [ -f "$merged/proc/$f" ]; then mount --bind /dev/null "$merged/proc/$f"; fi
done
for d in sys irq bus fs acpi scsi; do
    if [ -d "$merged/proc/$d" ]; then
        mount --bind "$merged/proc/$d" "$merged/proc/$d"
        mount -o remount,bind,ro "$merged/proc/$d"
    fi
done
if [ -d "$merged/sys/firmware" ]; then mount -t tmpfs -o ro,size=0 tmpfs "$merged/sys/firmware"; fi
mount -t tmpfs -o mode=755 tmpfs "$merged/dev"
# The six device nodes made anew in the root's own /dev (cp -a makes nodes, as runc's
# mknod does): one process instead of six bind mounts; nothing else of the host's /dev.
cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty "$merged/dev/"
mkdir -p "$merged/dev/pts" "$merged/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$merged/dev/pts" 2>/dev/null || true
ln -sf pts/ptmx "$merged/dev/ptmx"
ln -sf /proc/self/fd "$merged/dev/fd"
mount -t tmpfs tmpfs "$merged/dev/shm"
mount -t tmpfs tmpfs "$merged/run"
# Name resolution for package installs: the host's resolv.conf, bind-mounted
# so nothing of the host is written into the image.
if [ -f "$merged/etc/resolv.conf" ] && [ ! -L "$merged/etc/resolv.conf" ]; then
    mount --bind -o ro /etc/resolv.conf "$merged/etc/resolv.conf" || true
fi
# The package cache (pkgcache.py): this command's archives directory, never in the upper.
if [ -n "${AMIC_PKG_DIR:-}" ] && [ -d "$merged/var/cache/apt/archives" ]; then
    mount --bind "$AMIC_PKG_DIR" "$merged/var/cache/apt/archives"
fi
unset AMIC_PKG_DIR
exec "$python" -I -S "$confine" "$merged" "$@"
