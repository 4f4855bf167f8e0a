# shellcheck shell=sh
# A new image written over the root file system of an earlier disk, in place (disk_reuse):
# unchanged files keep their blocks, so an upload of the new disk over the earlier one's
# snapshot sends only what changed. Runs in a private mount namespace (unshare --mount).
#   $1 lowers  the overlay's lowerdir (colon-separated)  $6 uuid    the earlier root's UUID
#   $2 upper   the throwaway upperdir                    $7 offset  root partition start (bytes)
#   $3 work    the overlay's workdir                     $8 size    root partition size (bytes)
#   $4 merged  the overlay's mount point                 $9 mnt     the root file system's
#   $5 disk    the copy of the earlier disk                         mount point
#   $10 out    boot.img, core.img, BOOTX64.EFI, used-kib
#   $11 delta  the paths where the image's layers differ from the disk's (NUL-separated,
#              written by amic), or "" to compare every file
#   $12 python, $13 disk_delta.py  (sync-root.sh, put before this script, says what for)
# The per-disk files are those make-root.sh writes without a profile (keep the two equal;
# its devvm profile is for dev VM disks, never an EC2 one).
set -eu
lowers=$1 upper=$2 work=$3 merged=$4 disk=$5 uuid=$6 offset=$7 size=$8 mnt=$9 out=${10}
delta=${11} python=${12} filter=${13}
mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$upper,workdir=$work" "$merged"
beneath boot || refuse "/boot is missing"
# shellcheck disable=SC2012  # Debian's kernels are vmlinuz-VERSION: nothing for ls to mangle
kernel=$(cd "$merged/boot" && ls vmlinuz-* | sort -V | tail -n 1)
initrd=initrd.img-${kernel#vmlinuz-}
new_file etc/fstab
cat > "$merged/etc/fstab" <<EOT
UUID=$uuid / ext4 defaults,errors=remount-ro 0 1
EOT
new_file boot/grub/grub.cfg
cat > "$merged/boot/grub/grub.cfg" <<EOT
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry 'amic' {
    search --no-floppy --fs-uuid --set=root $uuid
    linux /boot/$kernel root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8
    initrd /boot/$initrd
}
EOT
if beneath var/cache/apt/archives; then rm -rf "$merged/var/cache/apt/archives/"*.deb; fi
for f in boot.img core.img BOOTX64.EFI; do
    regular_file "usr/lib/amic-vm/$f" && cp "$merged/usr/lib/amic-vm/$f" "$out/$f"
done
# the image's size, counted beside the copy (both only read the tree)
du -sxk "$merged" > "$out/du" &
counting=$!
# noatime: rsync reading a file (--checksum) must not write its inode: a block to upload
mount -t ext4 -o "loop,noatime,offset=$offset,sizelimit=$size" "$disk" "$mnt"
status=0
sync_root "$merged" "$mnt" "$upper" "$delta" "$python" "$filter" || status=$?
umount "$mnt"
wait "$counting" || status=1
cut -f1 < "$out/du" > "$out/used-kib"
exit "$status"
