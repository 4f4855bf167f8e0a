"""Where and how the build instance runs: spot or on-demand, which type, which subnet and zone.

Packer's amazon-ebs ``spot_price``/``spot_instance_types``, the instance type list,
``subnet_filter`` and ``availability_zone``, as amic does them:

- :func:`choose_subnet`: ``--subnet-filter TAG=VALUE`` (with ``--vpc`` and
  ``--availability-zone`` narrowing it) picks, among the matching subnets, the one with
  the most free addresses (Packer's ``most_free``), once, before the security group
  (whose VPC is the subnet's).
- :func:`attempts`: the RunInstances tries in order: with ``--spot-price``, a spot
  request for each ``--spot-instance-type`` (default: the ``--instance-type`` list),
  then on-demand for each ``--instance-type``. :func:`run_instance` moves to the next
  try only when EC2 says the capacity (or the spot price) is not there
  (:data:`CAPACITY_CODES`); any other refusal fails the build at once. One RunInstances
  per try, not a fleet: CreateFleet ``instant`` would pick among types too, but its
  errors come back per type inside a 200 answer and it cannot fall back to on-demand in
  another market order; the tries here are the same calls a user would make by hand.
- :func:`interruption`: after a step failed on a spot instance, whether EC2 took the
  instance back (``Server.SpotInstanceTermination``): the build then fails saying so;
  the layers it checkpointed before stay (they are snapshots, found by the next build).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from amic.errors import BuildError
from amic.targets.ec2 import session as aws

Log = Callable[[str], None]

CAPACITY_CODES = ("InsufficientInstanceCapacity", "InsufficientCapacity",
                  "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "Unsupported")
"""RunInstances refusals that another type, zone or market may not get ("Troubleshoot
instance launch issues", "Spot Instance request status"): the next try goes on."""
SPOT_INTERRUPTED = ("Server.SpotInstanceTermination", "Server.SpotInstanceShutdown")
"""StateReason codes of an instance EC2 took back (interruption behavior terminate/stop)."""


@attrs.frozen
class Attempt:
    """One RunInstances try: ``market`` is ``spot`` or ``on-demand``."""

    market: str
    instance_type: str

    def __str__(self) -> str:
        return f"{self.market} {self.instance_type}"


def attempts(opts) -> list[Attempt]:
    """Spot for each spot type (with ``--spot-price``), then on-demand for each type."""
    out = []
    if opts.spot_price:
        out += [Attempt("spot", t) for t in (opts.spot_instance_types or opts.instance_types)]
    return out + [Attempt("on-demand", t) for t in opts.instance_types]


def market_options(opts) -> dict:
    """RunInstances ``InstanceMarketOptions`` of a spot try: one-time, terminated when taken
    back (a build cannot resume on a stopped instance's half-written disk)."""
    spot: dict = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    if opts.spot_price and opts.spot_price != "auto":
        spot["MaxPrice"] = opts.spot_price
    return {"MarketType": "spot", "SpotOptions": spot}


def run_instance(ec2, args: Mapping, opts, log: Log) -> tuple[dict, Attempt]:
    """RunInstances through :func:`attempts`: the instance's entry of the answer that
    launched, and which try it was.

    Each try has its own ClientToken (EC2 refuses one token with other arguments:
    IdempotentParameterMismatch) derived from the build's, so a retried call of one try
    is still idempotent."""
    import botocore.exceptions

    tries = attempts(opts)
    refused: list[str] = []
    for n, attempt in enumerate(tries):
        call = {**args, "InstanceType": attempt.instance_type}
        call.pop("InstanceMarketOptions", None)
        if attempt.market == "spot":   # the spot request is a resource too: tagged at creation
            call["InstanceMarketOptions"] = market_options(opts)
            instance_tags = next(s["Tags"] for s in args["TagSpecifications"]
                                 if s["ResourceType"] == "instance")
            call["TagSpecifications"] = [*args["TagSpecifications"], {
                "ResourceType": "spot-instances-request", "Tags": instance_tags}]
        if n:
            call["ClientToken"] = f"{args['ClientToken'][:60]}-{n}"
        try:
            if opts.temporary_iam_policy:   # a profile made a moment ago: IAM propagates
                from amic.targets.ec2 import iamprofile

                reply = iamprofile.launching(lambda: ec2.run_instances(**call), log)
            else:
                reply = ec2.run_instances(**call)
        except botocore.exceptions.ClientError as exc:
            code = aws.error_code(exc)
            if code not in CAPACITY_CODES:
                raise aws.explain(exc, f"launching a {attempt} from {args['ImageId']}") from None
            refused.append(f"{attempt}: {code}")
            if n + 1 < len(tries):
                log(f"no {attempt} instance ({code}); trying {tries[n + 1]}")
            continue
        return reply["Instances"][0], attempt
    raise BuildError("no instance could be launched, every try was refused: "
                     + "; ".join(refused) + " (give more --instance-type / --spot-instance-type, "
                     "another --availability-zone or --subnet-filter)")


def choose_subnet(ec2, opts, log: Log) -> str | None:
    """The subnet ``--subnet-filter`` picks (most free addresses), or ``--subnet``, or None."""
    if opts.subnet_id or not opts.subnet_filter:
        return opts.subnet_id
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in opts.subnet_filter.items()]
    if opts.vpc_id:
        filters.append({"Name": "vpc-id", "Values": [opts.vpc_id]})
    if opts.availability_zone:
        filters.append({"Name": "availability-zone", "Values": [opts.availability_zone]})
    subnets = aws.call("looking up --subnet-filter subnets", ec2.describe_subnets,
                       Filters=filters)["Subnets"]
    subnets = [s for s in subnets if s.get("State", "available") == "available"]
    if not subnets:
        wanted = ", ".join(f"{k}={v}" for k, v in opts.subnet_filter.items())
        raise BuildError(f"--subnet-filter {wanted}: no available subnet matches in "
                         f"{ec2.meta.region_name}"
                         + (f" {opts.availability_zone}" if opts.availability_zone else ""))
    best = max(subnets, key=lambda s: (s.get("AvailableIpAddressCount", 0), s["SubnetId"]))
    log(f"subnet {best['SubnetId']} ({best.get('AvailabilityZone')}, "
        f"{best.get('AvailableIpAddressCount')} free addresses) of {len(subnets)} matching")
    return best["SubnetId"]


def placed(ec2, opts, log: Log):
    """``opts`` with ``--subnet-filter`` resolved to a subnet (:func:`choose_subnet`)."""
    return attrs.evolve(opts, subnet_id=choose_subnet(ec2, opts, log), subnet_filter={})


def placement_args(opts) -> dict:
    """RunInstances ``Placement`` for ``--availability-zone`` (nothing without it)."""
    return {"Placement": {"AvailabilityZone": opts.availability_zone}} \
        if opts.availability_zone else {}


def interruption(ec2, instance_id: str) -> str | None:
    """Why EC2 took ``instance_id`` back (its StateReason), if it did; None otherwise or
    when that cannot be told (the caller's own error then stands)."""
    try:
        reply = ec2.describe_instances(InstanceIds=[instance_id])
        inst = reply["Reservations"][0]["Instances"][0]
    except Exception:  # noqa: BLE001 - the build's own error is the one to report
        return None
    reason = inst.get("StateReason") or {}
    if reason.get("Code") in SPOT_INTERRUPTED:
        return f"{reason['Code']}: {reason.get('Message') or 'spot capacity taken back'}"
    return None


def interrupted_error(ec2, instance_id: str, exc: BaseException) -> BuildError | None:
    """The BuildError to fail with when ``exc`` came from a spot interruption, else None."""
    why = interruption(ec2, instance_id)
    if why is None:
        return None
    return BuildError(f"spot instance {instance_id} was interrupted ({why}) while the build "
                      f"ran ({exc}); the layers checkpointed before it stay cached: run the "
                      "build again to go on from them (or drop --spot-price)")
