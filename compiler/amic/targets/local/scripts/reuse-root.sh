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
# The per-disk files are those make-root.sh writes without a profile (keep the two equal;
# its devvm profile is for dev VM disks, never an EC2 one).
set -eu
lowers=$1 upper=$2 work=$3 merged=$4 disk=$5 uuid=$6 offset=$7 size=$8 mnt=$9 out=${10}
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
du -sxk "$merged" | cut -f1 > "$out/used-kib"
mount -t ext4 -o "loop,offset=$offset,sizelimit=$size" "$disk" "$mnt"
# --inplace: a changed file is rewritten in its own blocks; an unchanged one is not
# touched. Whole files locally, so identical content lands identically. --checksum: the
# stage2's files all have the time 0 (a reproducible tarball), so a changed script or
# manifest of the same size would pass rsync's size-and-time check for unchanged.
status=0
rsync -aHAX --checksum --numeric-ids --inplace --delete --exclude=/lost+found \
    "$merged/" "$mnt/" || status=$?
umount "$mnt"
exit "$status"
