"""Termination as EC2 documents it, which moto skips: ``shutting-down`` for a while, and a
security group that cannot be deleted while an instance not yet ``terminated`` holds it.

moto answers ``terminated`` on the first DescribeInstances after TerminateInstances and
deletes any security group whenever asked. EC2 keeps the instance ``shutting-down`` for
tens of seconds, and DeleteSecurityGroup answers ``DependencyViolation`` while an instance
(or its network interface, a little longer) still uses the group ("Delete a security
group", Amazon VPC User Guide). Both matter to a tool: one that deletes its group too
early fails its cleanup, and one that waits for ``terminated`` pays for it.

``Termination`` hooks the proxy: TerminateInstances records when each instance went and
the groups it held at that moment (so moving it to another group first, with
ModifyInstanceAttribute, frees the old one); DescribeInstances shows it ``shutting-down``
until ``seconds`` have passed; DeleteSecurityGroup refuses a group a live instance or a
shutting-down one holds.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET

SHUTTING_DOWN = ("32", "shutting-down")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class Termination:
    def __init__(self, proxy, api_error, seconds: float = 1.0) -> None:
        self.proxy = proxy
        self.api_error = api_error
        self.seconds = seconds
        """How long a terminated instance stays ``shutting-down`` (EC2: about half a minute)."""
        self.going: dict[str, tuple[float, frozenset[str]]] = {}
        """Instance id -> (monotonic time of TerminateInstances, the groups it held)."""
        self.refused = 0
        """DeleteSecurityGroup calls answered DependencyViolation."""
        self._lock = threading.Lock()
        proxy.before["TerminateInstances"].append(self._terminating)
        proxy.after["DescribeInstances"].append(self._describe)
        proxy.before["DeleteSecurityGroup"].append(self._delete_group)

    def reset(self) -> None:
        with self._lock:
            self.going.clear()
            self.refused = 0

    def _held(self, ids: list[str]) -> dict[str, frozenset[str]]:
        reply = self.proxy.moto_client().describe_instances(InstanceIds=ids)
        return {i["InstanceId"]: frozenset(g["GroupId"] for g in i.get("SecurityGroups", []))
                for r in reply["Reservations"] for i in r["Instances"]
                if i["State"]["Name"] != "terminated"}

    def _terminating(self, params) -> None:
        ids = [v for k, v in params.items() if k.startswith("InstanceId.")]
        if not ids:
            return
        try:
            held = self._held(ids)
        except Exception:  # noqa: BLE001 - an unknown id: moto answers the call itself
            return
        now = time.monotonic()
        with self._lock:
            for iid, groups in held.items():
                self.going.setdefault(iid, (now, groups))

    def _shutting_down(self) -> dict[str, frozenset[str]]:
        now = time.monotonic()
        with self._lock:
            return {iid: groups for iid, (at, groups) in self.going.items()
                    if now - at < self.seconds}

    def _describe(self, params, text):
        going = self._shutting_down()
        if not going or not any(iid in text for iid in going):
            return None
        root = ET.fromstring(text)
        namespace = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
        if namespace:
            ET.register_namespace("", namespace)
        changed = False
        for node in root.iter():
            if _local(node.tag) != "item":
                continue
            fields = {_local(c.tag): c for c in node}
            iid = fields.get("instanceId")
            state = fields.get("instanceState")
            if iid is None or state is None or iid.text not in going:
                continue
            for part in state:
                if _local(part.tag) == "code":
                    part.text = SHUTTING_DOWN[0]
                elif _local(part.tag) == "name":
                    part.text = SHUTTING_DOWN[1]
            changed = True
        return ET.tostring(root, encoding="unicode") if changed else None

    def _delete_group(self, params) -> None:
        gid = params.get("GroupId", "")
        if not gid:
            return
        holders = [iid for iid, groups in self._shutting_down().items() if gid in groups]
        if not holders:
            reply = self.proxy.moto_client().describe_instances(Filters=[
                {"Name": "instance.group-id", "Values": [gid]},
                {"Name": "instance-state-name",
                 "Values": ["pending", "running", "stopping", "stopped"]}])
            holders = [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]
        if holders:
            with self._lock:
                self.refused += 1
            raise self.api_error("DependencyViolation",
                                 f"resource {gid} has a dependent object ({', '.join(holders)})")
