"""``amic export --format oci``: an OCI image archive of a local image.

One uncompressed layer (the image's whole root filesystem, as ``export
--format tar`` writes it), an image config with the image's labels, and a
manifest whose annotations carry the image's name, its id, and amic's
stage2 manifest (``/var/lib/amic/stage2/manifest``). The archive is an OCI
image layout in a tar (``oci-layout``, ``index.json``, ``blobs/sha256/``)
plus Docker's ``manifest.json``, so both ``podman load`` and ``docker load``
take it; ``podman run IMAGE`` then gets a shell in the same userland (the
boot hook does not run: a container does not boot).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from amic.contract import TAG_NAME
from amic.fsutil import open_output
from amic.targets.base import Image
from amic.targets.local import boot

MANIFEST_MEMBER = "./var/lib/amic/stage2/manifest"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def image_ref(image: Image) -> str:
    """``localhost/NAME:ID12``: NAME from the image's amic:name tag (default ``amic``)."""
    name = "".join(c if c.isalnum() or c in "._-" else "-"
                   for c in image.tags.get(TAG_NAME, "amic").lower()).strip("-._") or "amic"
    return f"localhost/{name}:{image.id[:12]}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def stage2_manifest(layer: Path) -> str:
    with tarfile.open(layer) as tf:
        try:
            member = tf.extractfile(MANIFEST_MEMBER)
        except KeyError:
            return ""
        return member.read().decode(errors="replace") if member else ""


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def write_oci(store, image: Image, out: Path) -> dict:
    """Write the archive to ``out``; return its reference and digests."""
    ref = image_ref(image)
    with store.scratch("oci-") as tmp:
        layer = tmp / "layer.tar"
        boot.export(store, image, layer)
        layer_digest = sha256_file(layer)
        labels = {k: v for k, v in image.tags.items() if isinstance(v, str)}
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "created": image.created,
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Cmd": ["/bin/bash"], "Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        }, sort_keys=True).encode()
        config_digest = hashlib.sha256(config).hexdigest()
        annotations = {"org.opencontainers.image.ref.name": ref,
                       "org.opencontainers.image.created": image.created or "",
                       "io.amic.image.id": image.id,
                       "io.amic.stage2.manifest": stage2_manifest(layer)}
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": f"sha256:{config_digest}",
                       "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": f"sha256:{layer_digest}",
                        "size": layer.stat().st_size}],
            "annotations": annotations}, sort_keys=True).encode()
        manifest_digest = hashlib.sha256(manifest).hexdigest()
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": MANIFEST_TYPE, "digest": f"sha256:{manifest_digest}",
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": ref,
                            "io.containerd.image.name": ref}}]}).encode()
        docker = json.dumps([{"Config": f"blobs/sha256/{config_digest}", "RepoTags": [ref],
                              "Layers": [f"blobs/sha256/{layer_digest}"]}]).encode()
        # atomic (or in place for a device/FIFO: "w|" never seeks); a failed or interrupted
        # export leaves nothing beside ``out``, a full disk is an error naming ``out``
        with open_output(out, mode=0o600, record_in=tmp) as fh, \
                tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            add_bytes(tf, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            add_bytes(tf, "index.json", index)
            add_bytes(tf, "manifest.json", docker)
            add_bytes(tf, f"blobs/sha256/{config_digest}", config)
            add_bytes(tf, f"blobs/sha256/{manifest_digest}", manifest)
            tf.add(layer, arcname=f"blobs/sha256/{layer_digest}")
    return {"ref": ref, "manifest": f"sha256:{manifest_digest}"}
