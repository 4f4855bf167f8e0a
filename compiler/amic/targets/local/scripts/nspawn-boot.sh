# shellcheck shell=sh
# Boot an image with systemd-nspawn (boot.nspawn_argv), in a private mount namespace
# (unshare --mount): mount the overlay, then exec nspawn, so nothing stays mounted on the
# host whatever happens to the boot.
#   $1 lowers  the overlay's lowerdir (colon-separated)   $3 work    the overlay's workdir
#   $2 upper   the overlay's upperdir                     $4 merged  its mount point
#   $5...      the systemd-nspawn command line
# nspawn's propagation directory goes on a tmpfs of this namespace: on a host whose /run is
# not a tmpfs, nspawn refuses to remove it at exit and warns ("Attempted to remove disk
# file system under /run/systemd/nspawn/propagate/...").
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" &&
    mkdir -p /run/systemd/nspawn &&
    mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn &&
    shift 4 &&
    exec "$@"
