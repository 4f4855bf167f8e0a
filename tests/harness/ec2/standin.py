"""The instance stand-in: overlay roots served by a real sshd, driven by the proxy's hooks.

Part of the fake EC2 ``tests/harness/ec2/`` (the package doc is the whole picture)."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.harness.ec2.amis import AmiRules
from tests.harness.ec2.api import ApiError, Ec2Proxy, numbered, tag_specs, xml_values
from tests.harness.ec2.boot import (Imds, Instance, Relay, loopback_address, snapshot_tags,
                                    with_public_addresses, without_snapshot_tags)
from tests.harness.ec2.copies import ImageCopies
from tests.harness.ec2.plain_sshd import PlainSshd
from tests.harness.ec2.terminate import Termination
from tests.harness.ec2.units import early_boot, hold_dpkg_lock, late_boot


class StandIn:
    """Instances as overlay roots served by a real sshd (``tests/harness/sshd.py``).

    ``images`` maps an AMI id to its layers (top first); base AMIs registered
    with ``register_base`` map to a read-only base root (a debootstrap tree).
    Without ``base_root`` (no root privileges, or lifecycle-only tests) no
    sshd is started and SSH never comes up.
    """

    def __init__(self, proxy: Ec2Proxy, workdir: Path, base_root: Path | None) -> None:
        self.proxy = proxy
        self.workdir = workdir
        self.base_root = base_root
        self.images: dict[str, list[Path]] = {}
        self.keys: dict[str, str] = {}
        self.instances: dict[str, Instance] = {}
        self.current: str | None = None
        self.ssh_up = True
        """False: instances never answer on SSH (the relay refuses)."""
        self.wrong_fingerprint = False
        """True: the console prints a host key fingerprint that is not the instance's."""
        self.print_fingerprints = True
        self.plain: PlainSshd | None = None
        """When set, every instance is this one sshd (no roots: host key and lifecycle tests)."""
        self.keep_disks = False
        """True: a terminated instance's upper directory is kept (to search it afterwards)."""
        self.launches: list[tuple[str, str]] = []
        """(instance id, image id) of every RunInstances, in order."""
        self.image_of: dict[str, str] = {}
        """AMI id -> the instance it was made from."""
        self.terminated: list[Instance] = []
        self.snapshot_seconds = 0.5
        """How long a new snapshot stays ``pending`` (moto answers ``completed`` at once)."""
        self.snapshots: dict[str, list[Path]] = {}
        """Snapshot id -> the disk it captured (its layers, top first)."""
        self.snapshot_of: dict[str, str] = {}
        """Snapshot id -> the instance it was taken of."""
        self.copy_seconds = 0.0
        """Time the hooks spent copying disks (CreateSnapshot, CreateImage of a running
        instance): the stand-in's own cost, which EC2 does not make the caller wait for."""
        self._ready: dict[str, float] = {}
        self._moto_snap: dict[str, str] = {}
        """moto's own snapshot id of a registered AMI -> the snapshot it was registered from."""
        self.dpkg_lock_seconds = 0.0
        """At an instance's first boot a process holds dpkg's locks this long (what
        unattended-upgrades and apt-daily do on a fresh EC2 instance); 0: none."""
        self.dpkg_holders: list[str] = []
        self.relay_idle_timeout: float | None = None
        """Relays made from now on cut a connection silent both ways this long (``Relay``)."""
        """Instance ids whose first boot started the dpkg lock holder."""
        self.own_addresses = False
        """True: each instance answers SSH on its own loopback address (its DescribeInstances
        ``PublicIpAddress``) at ``relay_port``, so concurrent builds each reach their own
        instance (``--ssh-port`` without ``--ssh-host``); the shared relay still serves
        the most recent one."""
        self.addresses: dict[str, str] = {}
        self._relays: dict[str, Relay] = {}
        self.problems: list[str] = []
        """What the stand-in could not do while booting an instance (tests expect none)."""
        self._lock = threading.RLock()
        self._n = 0
        self.relay = Relay(self._current_port)
        self.relay_port = self.relay.port
        for action, hook in (("ImportKeyPair", self._import_key), ("RunInstances", self._run),
                             ("StopInstances", self._stop), ("StartInstances", self._start),
                             ("CreateImage", self._create_image),
                             ("TerminateInstances", self._terminate),
                             ("GetConsoleOutput", self._console),
                             ("DescribeImages", self._ebs_root),
                             ("CreateSnapshot", self._create_snapshot),
                             ("DescribeSnapshots", self._snapshot_states),
                             ("RegisterImage", self._register_image),
                             ("DescribeInstances", self._public_addresses)):
            proxy.after[action].append(hook)
        proxy.forward["CreateImage"].append(without_snapshot_tags)
        proxy.after["CreateImage"].append(self._tag_image_snapshots)
        self.termination = Termination(proxy, ApiError)
        """``shutting-down`` for a while, and no group deleted while an instance holds it."""
        proxy.before["RegisterImage"].append(self._register_needs_completed)
        proxy.before["DeleteKeyPair"].append(self._delete_key_pair_by_id)
        self.ami_rules = AmiRules(proxy)
        """Volume and AMI-attribute calls as EC2 takes them (``amis.py``)."""
        self.image_copies = ImageCopies(proxy)
        """CopyImage tagged at creation, and slow on request (``copies.py``)."""

    def _current_port(self):
        with self._lock:
            inst = self.instances.get(self.current or "")
            return inst.port if inst and self.ssh_up else None

    def register_base(self, ec2, name: str, *, arch: str = "x86_64") -> str:
        """Register a base AMI (named like the distribution's own) backed by ``base_root``."""
        ami = ec2.register_image(Name=name, Architecture=arch, RootDeviceName="/dev/xvda",
                                 VirtualizationType="hvm",
                                 BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                                       "Ebs": {"VolumeSize": 8}}])["ImageId"]
        self.images[ami] = [self.base_root] if self.base_root else []
        return ami

    # hooks (they run in the proxy's threads) ---------------------------------

    def _import_key(self, params, text):
        material = base64.b64decode(params.get("PublicKeyMaterial", "")).decode()
        self.keys[params.get("KeyName", "")] = material.strip()

    def _stored_key(self, name: str) -> str | None:
        """The public key moto keeps for a key pair (what a real instance's cloud-init installs)."""
        if not name:
            return None
        with contextlib.suppress(Exception):
            pairs = self.proxy.moto_client().describe_key_pairs(
                KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
            if pairs and pairs[0].get("PublicKey"):
                return pairs[0]["PublicKey"].strip()
        return self.keys.get(name)

    def _run(self, params, text):
        image = params.get("ImageId", "")
        pubkey = self._stored_key(params.get("KeyName", ""))
        with self._lock:
            for iid in xml_values(text, "instanceId"):
                if iid in self.instances:   # a retried RunInstances with the same client token
                    continue
                self._n += 1
                upper = self.workdir / f"instance-{self._n}-{iid}"
                upper.mkdir(parents=True)
                inst = Instance(iid, image, list(self.images.get(image, [])), upper, pubkey)
                self.instances[iid] = inst
                if self.own_addresses:
                    self._own_relay(inst, loopback_address(self._n))
                self.launches.append((iid, image))
                self._boot(inst)

    def _boot(self, inst: Instance) -> None:
        """Start the instance's sshd over overlay(its image's lowers + its upper ``root``)."""
        if self.plain is not None and inst.pubkey:
            self.plain.authorize(inst.pubkey)
            inst.port, inst.host_key = self.plain.port, self.plain.host_key
            inst.sshd = self.plain
            inst.started += 1
            self.current = inst.id
            inst.booted.set()
            return
        if not (self.base_root and inst.lowers and inst.pubkey):
            inst.booted.set()
            return     # no root to serve: SSH never comes up
        from tests.harness.sshd import SshdRoot, new_key

        if inst.host_key is None:      # generated at first boot, kept over stop/start
            inst.host_key = new_key("ed25519")
            self._install_key(inst)
        inst.booted.clear()
        inst.imds = Imds(inst.id, self.proxy.moto_client(), inst.imds_requests)
        server = SshdRoot(inst.lowers, inst.upper / "root", [inst.pubkey],
                          host_key=inst.host_key, workdir=inst.upper,
                          on_root_ready=lambda srv: early_boot(inst, srv, self.problems))
        try:
            server.start()
        except BaseException:
            inst.imds.close()
            inst.imds = None
            raise
        inst.sshd = server
        inst.port = server.port
        inst.started += 1
        if inst.started == 1 and self.dpkg_lock_seconds > 0:
            hold_dpkg_lock(inst, server, self.dpkg_lock_seconds, self.problems, self.dpkg_holders)
        self.current = inst.id
        late_boot(inst, server, self.problems)

    def _own_relay(self, inst: Instance, address: str) -> None:
        def port():
            with self._lock:
                return inst.port if self.ssh_up else None

        self.addresses[inst.id] = address
        self._relays[inst.id] = Relay(port, address, self.relay_port,
                                      idle_timeout=self.relay_idle_timeout)

    def _public_addresses(self, params, text):
        with self._lock:
            addresses = dict(self.addresses)
        return with_public_addresses(text, addresses) if addresses else None

    def real_snapshot(self, snap: str) -> str:
        """The snapshot an image registered by RegisterImage really uses (moto invents one)."""
        return self._moto_snap.get(snap, snap)

    @staticmethod
    def _install_key(inst: Instance) -> None:
        """What cloud-init does at first boot: append the key pair's key to the login user's
        authorized_keys (root here), so the image keeps it unless the build removes it."""
        rel = Path("root/.ssh/authorized_keys")
        old = next((layer / rel for layer in inst.lowers if (layer / rel).exists()), None)
        target = inst.upper / "root" / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = old.read_text() if old is not None else ""
        target.write_text(text + ("" if not text or text.endswith("\n") else "\n")
                          + inst.pubkey.strip() + "\n")
        target.chmod(0o600)

    def _halt(self, inst: Instance) -> None:
        if inst.sshd is self.plain and inst.sshd is not None:
            inst.sshd, inst.port = None, None
            return
        if inst.sshd is not None:
            server, inst.sshd, inst.port = inst.sshd, None, None
            server.stop()
        if inst.imds is not None:
            imds, inst.imds = inst.imds, None
            imds.close()

    def _stop(self, params, text):
        with self._lock:
            for iid in numbered(params, "InstanceId"):
                if iid in self.instances:
                    self._halt(self.instances[iid])

    def _start(self, params, text):
        with self._lock:
            for iid in numbered(params, "InstanceId"):
                inst = self.instances.get(iid)
                if inst and inst.sshd is None:
                    self._boot(inst)

    def _create_image(self, params, text):
        """Freeze the instance's upper as a new lower layer on top of its lowers.

        A stopped instance's upper is moved (it is what the image is); the
        instance goes on, if started again, with a fresh upper over the new
        chain, which shows it the same files. A running one (CreateImage
        without a stop) is copied, xattrs and whiteouts included."""
        iid = params.get("InstanceId", "")
        with self._lock:
            inst = self.instances.get(iid)
            if inst is None:
                return
            for ami in xml_values(text, "imageId"):
                layer = self.workdir / f"image-{ami}"
                src = inst.upper / "root"
                if not src.exists():
                    self.images[ami] = list(inst.lowers)
                elif inst.sshd is None and self.plain is None:
                    os.rename(src, layer)
                    inst.lowers = [layer, *inst.lowers]
                    self.images[ami] = list(inst.lowers)
                else:
                    subprocess.run(["cp", "-a", str(src), str(layer)], check=True)
                    self.images[ami] = [layer, *inst.lowers]
                self.image_of[ami] = iid

    def _tag_image_snapshots(self, params, text):
        """CreateImage's ``snapshot`` TagSpecification, which moto does not implement: the
        new image's snapshots carry the tags from the moment the image exists, as on EC2."""
        tags = snapshot_tags(params)
        if not tags:
            return
        moto = self.proxy.moto_client()
        for ami in xml_values(text, "imageId"):
            image = moto.describe_images(ImageIds=[ami])["Images"][0]
            snaps = [b["Ebs"]["SnapshotId"] for b in image.get("BlockDeviceMappings", [])
                     if b.get("Ebs", {}).get("SnapshotId")]
            if snaps:
                moto.create_tags(Resources=snaps,
                                 Tags=[{"Key": k, "Value": v} for k, v in tags.items()])

    def _delete_key_pair_by_id(self, params):
        """DeleteKeyPair by ``KeyPairId`` alone, as EC2 allows (moto reads only ``KeyName``)."""
        pair_id = params.get("KeyPairId")
        if not pair_id or params.get("KeyName"):
            return
        moto = self.proxy.moto_client()
        for pair in moto.describe_key_pairs()["KeyPairs"]:
            if pair.get("KeyPairId") == pair_id:
                moto.delete_key_pair(KeyName=pair["KeyName"])

    # snapshots ---------------------------------------------------------------------

    def _instance_of_volume(self, volume_id: str) -> str | None:
        with contextlib.suppress(Exception):
            vols = self.proxy.moto_client().describe_volumes(VolumeIds=[volume_id])["Volumes"]
            for att in vols[0].get("Attachments", []):
                return att["InstanceId"]
        return None

    def _create_snapshot(self, params, text):
        """The disk as it is now: a copy of the instance's upper over its lower chain (the
        instance keeps running with its own upper); ``pending`` for ``snapshot_seconds``."""
        iid = self._instance_of_volume(params.get("VolumeId", ""))
        t0 = time.monotonic()
        with self._lock:
            inst = self.instances.get(iid or "")
            for snap in xml_values(text, "snapshotId"):
                self._ready[snap] = time.monotonic() + self.snapshot_seconds
                if inst is None:
                    continue
                layer = self.workdir / f"snapshot-{snap}"
                src = inst.upper / "root"
                if src.exists():
                    subprocess.run(["cp", "-a", str(src), str(layer)], check=True)
                    self.snapshots[snap] = [layer, *inst.lowers]
                else:
                    self.snapshots[snap] = list(inst.lowers)
                self.snapshot_of[snap] = inst.id
        self.copy_seconds += time.monotonic() - t0
        return text.replace("<status>completed</status>", "<status>pending</status>")

    def snapshot_state(self, snap: str) -> str:
        return "pending" if time.monotonic() < self._ready.get(snap, 0) else "completed"

    def _snapshot_states(self, params, text):
        root = ET.fromstring(text)
        for item in root.iter():
            if item.tag.split("}")[-1] != "item":
                continue
            fields = {el.tag.split("}")[-1]: el for el in item}
            if "snapshotId" in fields and "status" in fields:
                state = self.snapshot_state(fields["snapshotId"].text or "")
                fields["status"].text = state
                if "progress" in fields and state == "pending":
                    fields["progress"].text = "40%"
        return ET.tostring(root, encoding="unicode")

    def _register_needs_completed(self, params):
        snap = params.get("BlockDeviceMapping.1.Ebs.SnapshotId", "")
        if snap and self.snapshot_state(snap) != "completed":
            raise ApiError("IncorrectState", f"Snapshot '{snap}' is not 'completed'.")

    def _register_image(self, params, text):
        """An image whose instances start from exactly the snapshot's disk; tagged at creation
        (moto drops RegisterImage's TagSpecifications and invents a snapshot of its own:
        that one is removed and reported as the snapshot the image was registered from)."""
        snap = params.get("BlockDeviceMapping.1.Ebs.SnapshotId", "")
        moto = self.proxy.moto_client()
        for ami in xml_values(text, "imageId"):
            tags = tag_specs(params, "image")
            if tags:
                moto.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v}
                                                        for k, v in tags.items()])
            if not snap:
                continue
            with self._lock:
                if snap in self.snapshots:
                    self.images[ami] = list(self.snapshots[snap])
                    self.image_of[ami] = self.snapshot_of.get(snap, "")
            with contextlib.suppress(Exception):
                raw = moto.describe_images(ImageIds=[ami])["Images"][0]
                for bdm in raw.get("BlockDeviceMappings", []):
                    fake = bdm.get("Ebs", {}).get("SnapshotId")
                    if fake and fake != snap:
                        self._moto_snap[fake] = snap
                        with contextlib.suppress(Exception):
                            moto.delete_snapshot(SnapshotId=fake)

    def _terminate(self, params, text):
        with self._lock:
            for iid in numbered(params, "InstanceId"):
                inst = self.instances.pop(iid, None)
                relay = self._relays.pop(iid, None)
                if relay is not None:
                    relay.close()
                if inst is not None:
                    self._halt(inst)
                    self.terminated.append(inst)
                    if not self.keep_disks:
                        shutil.rmtree(inst.upper, ignore_errors=True)

    def disks(self) -> list[Path]:
        """Every directory an instance wrote to: live and kept uppers, and frozen image layers."""
        found = [i.upper for i in [*self.instances.values(), *self.terminated] if i.upper.exists()]
        found += sorted(p for p in self.workdir.glob("image-*") if p.is_dir())
        found += sorted(p for p in self.workdir.glob("snapshot-*") if p.is_dir())
        return found

    def _ebs_root(self, params, text):
        """moto calls every AMI's root device ``standard`` (instance store); all of them here
        have an EBS snapshot as their root, as real EC2 reports them (Packer insists on it)."""
        text = text.replace("<rootDeviceType>standard</rootDeviceType>",
                            "<rootDeviceType>ebs</rootDeviceType>")
        for fake, real in list(self._moto_snap.items()):
            text = text.replace(fake, real)
        return text

    def fingerprint_lines(self, inst: Instance) -> list[str]:
        import hashlib

        if inst.host_key is None or not self.print_fingerprints:
            return []
        blob = inst.host_key.asbytes()
        if self.wrong_fingerprint:
            blob = b"not-the-key" + blob
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        kind = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA"}.get(inst.host_key.get_name(), "ECDSA")
        bits = inst.host_key.get_bits()
        return ["ci-info: no authorized SSH keys fingerprints found for user admin.",
                "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----",
                f"ec2: {bits} SHA256:{digest} root@ip-10-0-0-1 ({kind})",
                "ec2: -----END SSH HOST KEY FINGERPRINTS-----",
                "ec2: #############################################################"]

    def _console(self, params, text):
        inst = self.instances.get(params.get("InstanceId", ""))
        if inst is None:
            return text
        root = ET.fromstring(text)
        for el in root.iter():
            if el.tag.split("}")[-1] == "output":
                old = el.text or ""
                try:
                    old = base64.b64decode(old).decode()
                except ValueError:
                    pass
                new = old + "".join(f"{line}\n" for line in
                                    [*self.fingerprint_lines(inst), *list(inst.console)])
                el.text = base64.b64encode(new.encode()).decode()
        return ET.tostring(root, encoding="unicode")

    def close(self) -> None:
        with self._lock:
            for inst in list(self.instances.values()):
                self._halt(inst)
            self.instances.clear()
            for relay in self._relays.values():
                relay.close()
            self._relays.clear()
        self.relay.close()
