# shellcheck shell=sh
# sync_root MERGED DEST UPPER DELTA PYTHON FILTER: DEST (the root file system of a kept
# disk, holding an earlier image's merged tree) made the same as MERGED (the new image's,
# over the overlay upper UPPER that holds the disk's own files), for reuse-root.sh.
# --inplace: a changed file is rewritten in its own blocks; an unchanged one is not
# touched. Whole files locally, so identical content lands identically. --checksum: the
# stage2's files all have the time 0 (a reproducible tarball), so a changed script or
# manifest of the same size would pass rsync's size-and-time check for unchanged.
# DELTA: the paths where the two images' layers differ (NUL-separated, disk_delta.py), or
# "" to compare every file. FILTER (disk_delta.py, run by PYTHON) adds UPPER's paths and
# keeps only those reached through no link on either side, with the contents of
# directories DEST lacks; its status 3 says the delta cannot be told after all.
sync_root() {
    s_merged=$1 s_dest=$2 s_upper=$3 s_delta=$4 s_status=0
    if [ -n "$s_delta" ]; then
        "$5" -I -S "$6" "$s_merged" "$s_dest" "$s_upper" "$s_delta" "$s_delta.safe" \
            || s_status=$?
        if [ "$s_status" -eq 3 ]; then s_delta='' s_status=0; fi
        [ "$s_status" -eq 0 ] || return "$s_status"
    fi
    if [ -n "$s_delta" ]; then
        rsync -aHAX --checksum --numeric-ids --inplace --from0 --files-from="$s_delta.safe" \
            --delete-missing-args --force "$s_merged/" "$s_dest/"
    else
        rsync -aHAX --checksum --numeric-ids --inplace --delete --exclude=/lost+found \
            "$s_merged/" "$s_dest/"
    fi
}
