# shellcheck shell=sh
# amic-imds.service on an EC2 disk (ec2disk.py): this instance's SSH public key and
# hostname from the instance metadata service, IMDSv2 only (a token first), as amic's
# own unit instead of cloud-init. Runs at every boot: a new instance of the AMI gets its
# own key pair and name; the key is added to root's authorized_keys, never baked.
# Waits for nothing when the service answers; retries only while it does not.
set -u
url=${AMIC_IMDS_URL:-http://169.254.169.254}
token=
tries=0
while ! token=$(curl -fsS -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
        "$url/latest/api/token"); do
    tries=$((tries + 1))
    if [ "$tries" -ge 15 ]; then
        echo "amic-imds: no instance metadata service at $url" >&2
        exit 1
    fi
    sleep 1
done
get() {
    curl -fsS -m 3 -H "X-aws-ec2-metadata-token: $token" "$url/latest/meta-data/$1"
}
rc=0
if key=$(get public-keys/0/openssh-key) && [ -n "$key" ]; then
    umask 077
    mkdir -p /root/.ssh
    touch /root/.ssh/authorized_keys
    grep -qxF -- "$key" /root/.ssh/authorized_keys ||
        printf '%s\n' "$key" >>/root/.ssh/authorized_keys
    umask 022
else
    echo "amic-imds: no SSH public key in the instance metadata (launched without a key pair?)" >&2
fi
# local-hostname is missing on IPv6-only instances: hostname then
name=$(get local-hostname 2>/dev/null) || name=$(get hostname) || name=
name=${name%%.*}
case $name in
    '' | -* | *[!A-Za-z0-9-]*)
        echo "amic-imds: no usable hostname in the instance metadata: '$name'" >&2
        rc=1
        ;;
    *)
        printf '%s\n' "$name" >/etc/hostname.amic-part && mv -f /etc/hostname.amic-part /etc/hostname
        printf '%s' "$name" >/proc/sys/kernel/hostname || rc=1
        ;;
esac
exit "$rc"
