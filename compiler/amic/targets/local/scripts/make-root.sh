# shellcheck shell=sh
# The root file system of a bootable disk (disk.make_raw). Runs in a private mount
# namespace (unshare --mount): the overlay of the VM layer's chain with a throwaway
# upper, the per-disk files written into it, then the root file system made from it
# at its partition's offset; what the Python side needs next goes to $out.
#   $1 lowers  the overlay's lowerdir (colon-separated)  $6 uuid  the root's file system UUID
#   $2 upper   the throwaway upperdir                    $7 key   authorized_keys to add, or ''
#   $3 work    the overlay's workdir                     $8 out   boot.img, core.img,
#   $4 merged  the mount point                                    BOOTX64.EFI, used-kib, root-mib
#   $5 disk    the raw disk file
#   $9 root_start_mib  where the root partition starts; $10 tail_bytes  room for the backup GPT
#   $11 profile  'devvm': a dev VM's disk (amic run --vm, amic up, a plain export): a quiet
#       kernel on the serial console only, and the units a dev VM has no use for masked (each
#       costs seconds of emulated CPU at boot under TCG); '' (EC2): as reuse-root.sh writes it
set -eu
lowers=$1 upper=$2 work=$3 merged=$4 disk=$5 uuid=$6 key=$7 out=$8 root_start_mib=$9
tail_bytes=${10} profile=${11:-}
mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$upper,workdir=$work" "$merged"
beneath boot || refuse "/boot is missing"
# shellcheck disable=SC2012  # Debian's kernels are vmlinuz-VERSION: nothing for ls to mangle
kernel=$(cd "$merged/boot" && ls vmlinuz-* | sort -V | tail -n 1)
initrd=initrd.img-${kernel#vmlinuz-}
new_file etc/fstab
cat > "$merged/etc/fstab" <<EOF
UUID=$uuid / ext4 defaults,errors=remount-ro 0 1
EOF
console="console=tty0 console=ttyS0,115200n8"
if [ "$profile" = devvm ]; then
    # Kernel and systemd messages over an emulated UART (and VGA) cost CPU under TCG: only
    # warnings and worse (and systemd's status when a unit fails or is slow).
    # IPv6 link-local addresses without duplicate address detection: networkd counts a link
    # configured (network-online, which the boot hook waits for) only once it has one, a
    # second after DHCP's address; on QEMU's user network nobody else could hold it.
    # random.trust_cpu=on: the CRNG seeded from RDRAND at once, whatever the kernel's
    # default (two TCG vCPUs hung when it became ready later, vm.TCG_CPU).
    console="console=ttyS0,115200n8 quiet sysctl.net.ipv6.conf.default.dad_transmits=0 random.trust_cpu=on"
    # No use on a dev VM: a getty on the VGA console (logins are by SSH key; the serial
    # getty stays), utmp records, debugfs/tracefs/hugetlbfs, DRM, device-mapper and EFI
    # pstore modules, and the daily/weekly timers (apt, man-db, fstrim, e2scrub) that
    # would compete with the first minutes of work. `systemctl unmask` undoes one.
    beneath etc/systemd/system make
    for unit in getty@tty1.service systemd-update-utmp.service \
        systemd-update-utmp-runlevel.service sys-kernel-debug.mount sys-kernel-tracing.mount \
        dev-hugepages.mount modprobe@drm.service modprobe@dm_mod.service \
        modprobe@efi_pstore.service apt-daily.timer apt-daily-upgrade.timer man-db.timer \
        fstrim.timer e2scrub_all.timer; do
        ln -sfn /dev/null "$merged/etc/systemd/system/$unit"
    done
fi
new_file boot/grub/grub.cfg
cat > "$merged/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry 'amic' {
    search --no-floppy --fs-uuid --set=root $uuid
    linux /boot/$kernel root=UUID=$uuid ro $console
    initrd /boot/$initrd
}
EOF
if [ -n "$key" ]; then
    beneath root/.ssh make && chmod 700 "$merged/root/.ssh"
    if [ -e "$merged/root/.ssh/authorized_keys" ] || [ -L "$merged/root/.ssh/authorized_keys" ]
    then
        regular_file root/.ssh/authorized_keys
    fi
    cat "$key" >> "$merged/root/.ssh/authorized_keys"
    chmod 600 "$merged/root/.ssh/authorized_keys"
fi
if beneath var/cache/apt/archives; then rm -rf "$merged/var/cache/apt/archives/"*.deb; fi
for f in boot.img core.img BOOTX64.EFI; do
    regular_file "usr/lib/amic-vm/$f" && cp "$merged/usr/lib/amic-vm/$f" "$out/$f"
done
du -sxk "$merged" | cut -f1 > "$out/used-kib"
used=$(cat "$out/used-kib")
size=$(( (used * 5 / 4 + 256 * 1024) / 1024 + 1 ))
echo "$size" > "$out/root-mib"
truncate -s $(( (root_start_mib + size) * 1048576 + tail_bytes )) "$disk"
mke2fs -q -F -t ext4 -L amic-root -U "$uuid" -O ^metadata_csum_seed,^orphan_file \
    -E "offset=$(( root_start_mib * 1048576 )),root_owner=0:0" -d "$merged" "$disk" "${size}M"
