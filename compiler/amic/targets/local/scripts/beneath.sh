# shellcheck shell=sh
# Functions for the scripts that write a disk's own files into an image's merged root
# ($merged) from the host's mount namespace (make-root.sh, reuse-root.sh; put before them by
# disk.root_script). There, a link the image holds resolves against the host's "/": an INIT
# that plants /etc/fstab -> /etc/shadow, or /boot -> /boot, would have root write the
# host's file. So no directory on the way may be a link, a file amic writes is made anew
# (what was there removed, never written through), and a file amic reads must be a regular
# file reached through no link. The image cannot change meanwhile: nothing runs in it.

# refuse MESSAGE: stop the script, naming what in the image is refused.
refuse() {
    echo "amic: the image's $1: amic writes and reads the disk's own files through no link" >&2
    exit 1
}

# beneath REL [make]: true when $merged/REL is a directory reached through no link; with
# 'make', made where it is missing. A link on the way, or a file where a directory
# belongs, is refused.
beneath() {
    # shellcheck disable=SC2154  # $merged: set by the script this file is put before
    b_path=$merged b_rest=$1
    while [ -n "$b_rest" ]; do
        b_path=$b_path/${b_rest%%/*}
        case $b_rest in */*) b_rest=${b_rest#*/} ;; *) b_rest= ;; esac
        if [ -L "$b_path" ]; then
            refuse "/${b_path#"$merged"/} is a link"
        elif [ ! -e "$b_path" ]; then
            [ "${2:-}" = make ] || return 1
            mkdir "$b_path" || refuse "/${b_path#"$merged"/} cannot be made"
        elif [ ! -d "$b_path" ]; then
            refuse "/${b_path#"$merged"/} is not a directory"
        fi
    done
}

# new_file REL: $merged/REL ready to be created afresh: its directory made through no link,
# and whatever file or link was there removed (a directory there is refused).
new_file() {
    beneath "${1%/*}" make
    if [ -d "$merged/$1" ] && [ ! -L "$merged/$1" ]; then
        refuse "/$1 is a directory"
    fi
    rm -f "$merged/$1"
}

# regular_file REL: $merged/REL is a regular file reached through no link, else refused.
regular_file() {
    beneath "${1%/*}" || refuse "/${1%/*} is missing"
    if [ -L "$merged/$1" ] || [ ! -f "$merged/$1" ]; then
        refuse "/$1 is not a regular file"
    fi
}
