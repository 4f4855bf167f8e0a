"""A dev VM of ``amic up`` (running or stopped) keeps the cached disk under its overlay, and
so its image, from prune and rmi: its own disk sits on that file until ``amic rm``."""

from __future__ import annotations

from amic.contract import KIND_LAYER, TAG_KIND, TAG_SERVICE
from amic.targets.local import machines, prune, vmdisks
from amic.targets.local.store import ImageStore


def test_a_stopped_dev_vm_holds_its_base_disk(tmp_path):
    store = ImageStore(tmp_path / "local")
    store.ensure_dirs()
    vm_layer = "ab" * 32
    base = vmdisks.disk_path(store, vm_layer)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_bytes(b"QFI\xfb")
    assert vmdisks.disk_users(store) == {}
    (machines.root(store) / "dev").mkdir(parents=True)
    machines.save(store, machines.VmRecord(name="dev", project="p", project_id=None,
                                           image="cd" * 32, base=str(base), ssh_port=2222,
                                           key="k", pid=None))          # stopped
    assert vmdisks.disk_users(store) == {base: [machines.vm_dir(store, "dev")]}
    metas = {vm_layer: {"tags": {TAG_SERVICE: prune.VM_SERVICE, TAG_KIND: KIND_LAYER}}}
    assert prune.is_vm_layer(metas[vm_layer])
    busy = prune.vm_busy(store, metas)
    assert busy[vm_layer] == f"a dev VM ({machines.vm_dir(store, 'dev')})"
