# shellcheck shell=sh
# The EC2 layer (ec2disk.py), over the VM layer, run as root in the image's chroot after
# amic-imds.service and its script were put in place: curl (the boot hook and the unit
# read the instance metadata with it), DHCP on any Ethernet NIC (ENA's ens5 on Nitro,
# whatever another instance type shows), the unit enabled, and a check that the kernel
# has the NVMe and ENA drivers EC2 needs.
set -eu
export DEBIAN_FRONTEND=noninteractive
if ! command -v curl >/dev/null 2>&1; then
    apt-get -q -o DPkg::Lock::Timeout=300 -o Dir::Cache::pkgcache= update
    apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dir::Cache::pkgcache= install \
        --no-install-recommends curl ca-certificates
    rm -f /var/cache/apt/pkgcache.bin /var/cache/apt/srcpkgcache.bin
fi
cat >/etc/systemd/network/80-amic-dhcp.network <<'UNIT'
[Match]
Type=ether

[Network]
DHCP=yes

[DHCPv4]
UseHostname=no
UNIT
systemctl enable amic-imds.service
for kver in /lib/modules/*; do
    modinfo -k "${kver##*/}" nvme ena >/dev/null
done
