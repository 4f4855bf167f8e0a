"""EC2 capacity and the spot market, which moto does not model: refusals and interruptions.

Part of the fake EC2 ``tests/harness/ec2/``. moto launches any type, in any market, at any
price. EC2 does not:

- ``InsufficientInstanceCapacity`` on RunInstances when the zone has none of the type
  ("Insufficient instance capacity", EC2 User Guide, troubleshooting launches): a fault a
  test turns on with ``refuse(market=..., instance_type=...)``; off by default.
- ``SpotMaxPriceTooLow`` for a spot request whose ``MaxPrice`` is below the current spot
  price ("Spot request status": ``price-too-low``): always on, at ``spot_price`` per hour.
- A spot interruption: ``interrupt(instance_id)`` terminates the instance through the proxy
  (so the stand-in's sshd goes, as the machine does) and DescribeInstances then gives it
  the ``StateReason`` EC2 gives a reclaimed spot instance (``Server.SpotInstanceTermination``).
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET

from tests.harness.ec2.api import ApiError

SPOT_INTERRUPTION = ("Server.SpotInstanceTermination",
                     "Server.SpotInstanceTermination: Spot instance termination")


class Capacity:
    def __init__(self, proxy, spot_price: float = 0.0104) -> None:
        self.proxy = proxy
        self.spot_price = spot_price
        """The spot price of every type (USD per hour)."""
        self._refusals: list[list] = []   # [market, type, remaining or None (always)]
        self.refused: list[tuple[str, str, str]] = []
        """(market, instance type, error code) of every RunInstances refused here."""
        self.interrupted: set[str] = set()
        self._lock = threading.Lock()
        proxy.before["RunInstances"].append(self._run)
        proxy.after["DescribeInstances"].append(self._describe)

    def refuse(self, *, market: str = "*", instance_type: str = "*",
               times: int | None = None) -> None:
        """Answer RunInstances of ``market`` (``spot``, ``on-demand``, ``*``) and
        ``instance_type`` (``*``: any) with InsufficientInstanceCapacity, ``times`` times
        (None: until ``reset``)."""
        with self._lock:
            self._refusals.append([market, instance_type, times])

    def reset(self) -> None:
        with self._lock:
            self._refusals.clear()
            self.refused.clear()
            self.interrupted.clear()

    def _run(self, params) -> None:
        market = "spot" if params.get("InstanceMarketOptions.MarketType") == "spot" else "on-demand"
        itype = params.get("InstanceType", "m1.small")
        zone = params.get("Placement.AvailabilityZone") or "us-east-1a"
        with self._lock:
            price = params.get("InstanceMarketOptions.SpotOptions.MaxPrice")
            if market == "spot" and price is not None and float(price) < self.spot_price:
                self.refused.append((market, itype, "SpotMaxPriceTooLow"))
                raise ApiError("SpotMaxPriceTooLow",
                               f"Your Spot request price of {price} is lower than the minimum "
                               f"required Spot request fulfillment price of {self.spot_price}.")
            for rule in self._refusals:
                if rule[0] in ("*", market) and rule[1] in ("*", itype) and rule[2] != 0:
                    if rule[2] is not None:
                        rule[2] -= 1
                    self.refused.append((market, itype, "InsufficientInstanceCapacity"))
                    raise ApiError(
                        "InsufficientInstanceCapacity",
                        f"We currently do not have sufficient {itype} capacity in the "
                        f"Availability Zone you requested ({zone}). Our system will be working "
                        f"on provisioning additional capacity.")

    def interrupt(self, instance_id: str) -> None:
        """EC2 takes the spot instance back: terminated, with the spot StateReason."""
        with self._lock:
            self.interrupted.add(instance_id)
        import boto3

        key, secret = self.proxy.credentials
        ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id=key,
                           aws_secret_access_key=secret, endpoint_url=self.proxy.url)
        ec2.terminate_instances(InstanceIds=[instance_id])

    def _describe(self, params, text):
        with self._lock:
            ids = {i for i in self.interrupted if i in text}
        if not ids:
            return None
        root = ET.fromstring(text)
        if root.tag.startswith("{"):
            ET.register_namespace("", root.tag[1:].split("}", 1)[0])
        for item in root.iter():
            fields = {_local(c.tag): c for c in item}
            if fields.get("instanceId") is None or fields["instanceId"].text not in ids:
                continue
            for part in fields.get("stateReason", ()):
                if _local(part.tag) in ("code", "message"):
                    part.text = SPOT_INTERRUPTION[_local(part.tag) == "message"]
        return ET.tostring(root, encoding="unicode")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
