set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get -q -o DPkg::Lock::Timeout=300 -o Dir::Cache::pkgcache= update
apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dir::Cache::pkgcache= install --no-install-recommends \
    linux-image-cloud-amd64 initramfs-tools grub-pc-bin grub-efi-amd64-bin \
    openssh-server cloud-guest-utils e2fsprogs fdisk udev kmod
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
mkdir -p /etc/initramfs-tools/conf.d
echo MODULES=list > /etc/initramfs-tools/conf.d/amic-vm.conf
printf '%s\n' virtio_pci virtio_blk virtio_scsi sd_mod nvme xen_blkfront ahci ata_piix \
    > /etc/initramfs-tools/modules
update-initramfs -u -k all
rm -f /var/cache/apt/pkgcache.bin /var/cache/apt/srcpkgcache.bin   # tens of MB apt remakes
mkdir -p /etc/systemd/network /usr/lib/amic-vm
cat > /etc/systemd/network/80-amic-dhcp.network <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
cat > /usr/lib/amic-vm/growroot <<'EOF'
src=$(findmnt -no SOURCE /)
dev=${src#/dev/}
n=$(cat "/sys/class/block/$dev/partition")
sys=$(readlink -f "/sys/class/block/$dev/..")
disk=/dev/${sys##*/}
read -r start <"/sys/class/block/$dev/start"
read -r size <"/sys/class/block/$dev/size"
read -r total <"$sys/size"
if [ $((total - start - size)) -gt 8192 ]; then
    growpart "$disk" "$n" || true    # exit 1: NOCHANGE (already grown)
fi
resize2fs "$src"
EOF
cat > /etc/systemd/system/amic-growroot.service <<'EOF'
[Unit]
Description=amic: grow the root partition and file system to the disk
After=systemd-remount-fs.service
Before=amic.service

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/lib/amic-vm/growroot

[Install]
WantedBy=multi-user.target
EOF
# amic up --mount: the folders shared over virtiofs, as the SMBIOS credential amic.mounts
# ("TAG=/guest/dir ..."), mounted before the boot hook so the services it starts see them.
cat > /usr/lib/amic-vm/mounts <<'EOF'
m=
if [ -f /run/credentials/@system/amic.mounts ]; then
    m=$(cat /run/credentials/@system/amic.mounts)
else
    for f in /sys/firmware/dmi/entries/11-*/raw; do
        [ -f "$f" ] || continue
        m="$m $(tr '\000' '\n' <"$f" | sed -n 's/^.*io\.systemd\.credential:amic\.mounts=//p')"
    done
fi
rc=0
for pair in $m; do
    tag=${pair%%=*}
    dir=${pair#*=}
    mkdir -p "$dir" && mount -t virtiofs "$tag" "$dir" || rc=1
done
exit "$rc"
EOF
cat > /etc/systemd/system/amic-mounts.service <<'EOF'
[Unit]
Description=amic: mount the folders shared by amic up
After=systemd-remount-fs.service local-fs.target
Before=amic.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /usr/lib/amic-vm/mounts

[Install]
WantedBy=multi-user.target
EOF
# The host key amic up made for this VM (so `amic ssh` checks it, and the emulated CPU makes
# no key): the SMBIOS credentials amic.ssh-host-key (the OpenSSH private key, base64) and
# amic.ssh-host-key.pub. Without them (amic run --vm, a disk booted elsewhere), keys made here.
cat > /usr/lib/amic-vm/hostkey <<'EOF'
k=/etc/ssh/ssh_host_ed25519_key
c=/run/credentials/@system
umask 077
if [ ! -f "$c/amic.ssh-host-key" ]; then     # systemd did not take them from the DMI table
    c=/run/amic-hostkey
    rm -rf "$c"
    mkdir -p "$c"
    for f in /sys/firmware/dmi/entries/11-*/raw; do
        [ -f "$f" ] || continue
        for n in amic.ssh-host-key amic.ssh-host-key.pub; do    # a table without it adds nothing
            tr '\000' '\n' <"$f" | sed -n "s/^io\.systemd\.credential\.binary:$n=//p" |
                base64 -d >>"$c/$n" 2>/dev/null || :
        done
    done
fi
# Copied by the shell's own read and printf: every program started costs a tenth of a
# second of the boot under TCG.
copy() {
    while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done <"$1" >"$2"
}
first='' kind=''
{ [ -f "$c/amic.ssh-host-key" ] && read -r first <"$c/amic.ssh-host-key"; } || :
{ [ -f "$c/amic.ssh-host-key.pub" ] && read -r kind _ <"$c/amic.ssh-host-key.pub"; } || :
if [ "$first" = "-----BEGIN OPENSSH PRIVATE KEY-----" ] && [ "$kind" = ssh-ed25519 ]; then
    (umask 022 && copy "$c/amic.ssh-host-key.pub" "$k.pub")
    copy "$c/amic.ssh-host-key" "$k.tmp"
    mv -f "$k.tmp" "$k"
else
    ssh-keygen -q -t ed25519 -N "" -f "$k"
    ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key
fi
rm -rf /run/amic-hostkey
EOF
mkdir -p /etc/systemd/system/amic-ssh-keygen.service.d
cat > /etc/systemd/system/amic-ssh-keygen.service.d/amic-vm.conf <<'UNIT'
[Service]
ExecStart=
ExecStart=/bin/sh -eu /usr/lib/amic-vm/hostkey
UNIT
systemctl enable systemd-networkd.service amic-growroot.service amic-mounts.service
systemctl mask e2scrub_reap.service
cat > /usr/lib/amic-vm/early.cfg <<'EOF'
search --no-floppy --label amic-root --set=root
set prefix=($root)/boot/grub
EOF
grub-mkimage -O i386-pc -o /usr/lib/amic-vm/core.img -c /usr/lib/amic-vm/early.cfg \
    -p /boot/grub biosdisk part_gpt part_msdos ext2 search search_label search_fs_uuid normal configfile linux echo serial terminal test gzio boot sleep
grub-mkimage -O x86_64-efi -o /usr/lib/amic-vm/BOOTX64.EFI -c /usr/lib/amic-vm/early.cfg \
    -p /boot/grub part_gpt part_msdos ext2 search search_label search_fs_uuid normal configfile linux echo serial terminal test gzio boot sleep efi_gop all_video
cp /usr/lib/grub/i386-pc/boot.img /usr/lib/amic-vm/boot.img
ls /boot/vmlinuz-* /boot/initrd.img-* >/dev/null
