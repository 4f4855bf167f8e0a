"""``amic ami prune`` and AMI names, through the real CLI against moto in server mode.

The AMIs are made with the moto client (CreateImage of a plain instance, tagged the way a
build tags them); what prune may remove and what must stay is asserted through the EC2 API.
Auto Scaling is served by the same moto server (``AWS_ENDPOINT_URL_AUTO_SCALING``).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from amic.contract import project_id
from tests.harness.ec2 import REGION, fake_ec2


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    with fake_ec2(tmp_path_factory.mktemp("ec2"), strict=True) as fake:
        yield fake


@pytest.fixture
def ec2(fake):
    fake.reset()
    return fake.client()


@pytest.fixture
def env(fake):
    return {**fake.env, "AWS_ENDPOINT_URL_AUTO_SCALING": fake.moto.url}


@pytest.fixture
def instance(fake, ec2):
    base = fake.register_debian12()
    return ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1,
                             InstanceType="t3.micro")["Instances"][0]["InstanceId"]


def make_ami(ec2, instance_id: str, *, name: str, key: str, kind: str = "final",
             service: str | None = None, layers: dict | None = None) -> str:
    # the identity a build outside git with NAME (or --name) gives (contract.project_id)
    tags = {"amic:tool": "amic", "amic:name": name, "amic:key": key, "amic:kind": kind,
            "amic:amifile": "Amifile", "amic:project": project_id(None, name),
            **({"amic:service": service} if service else {}),
            **{f"amic:layer:{svc}": k for svc, k in (layers or {}).items()}}
    spec = [{"Key": k, "Value": v} for k, v in tags.items()]
    image_id = ec2.create_image(
        InstanceId=instance_id, Name=f"{name}-{kind}-{key[:12]}-{uuid.uuid4().hex[:8]}",
        # moto 5.2.5 answers 500 to a "snapshot" TagSpecification on CreateImage
        TagSpecifications=[{"ResourceType": "image", "Tags": spec}])["ImageId"]
    time.sleep(1.05)  # moto's CreationDate has whole seconds: keep "newest" unambiguous
    return image_id


def images(ec2) -> set[str]:
    return {i["ImageId"] for i in ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "tag-key", "Values": ["amic:key"]}])["Images"]}


def snapshots_of(ec2, image_id: str) -> list[str]:
    img = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    return [b["Ebs"]["SnapshotId"] for b in img["BlockDeviceMappings"] if "Ebs" in b]


def project(ec2, instance_id: str, name: str) -> dict[str, str]:
    """One project built twice: an old final and layer, a current final and layer."""
    old_layer = make_ami(ec2, instance_id, name=name, key=f"{name}-L0", kind="layer", service="web")
    old = make_ami(ec2, instance_id, name=name, key=f"{name}-F0", layers={"web": f"{name}-L0"})
    layer = make_ami(ec2, instance_id, name=name, key=f"{name}-L1", kind="layer", service="web")
    final = make_ami(ec2, instance_id, name=name, key=f"{name}-F1", layers={"web": f"{name}-L1"})
    return {"old_layer": old_layer, "old": old, "layer": layer, "final": final}


def test_four_projects_named_amifile_are_pruned_independently(ec2, env, instance, amic_cli,
                                                              tmp_path):
    projects = {n: project(ec2, instance, n) for n in ("alpha", "beta", "gamma", "delta")}
    # In a checkout of alpha (its Amifile in the current directory): only alpha's go.
    checkout = tmp_path / "alpha"
    checkout.mkdir()
    (checkout / "Amifile").write_text("NAME alpha\nSERVICE web\nINIT true\n")
    dry = amic_cli("ami", "prune", "--dry-run", cwd=checkout, env=env, check=True)
    assert projects["alpha"]["old"] in dry.stderr and projects["beta"]["old"] not in dry.stderr
    out = amic_cli("ami", "prune", "--yes", cwd=checkout, env=env, check=True)
    left = images(ec2)
    a = projects["alpha"]
    assert a["final"] in left and a["layer"] in left
    assert a["old"] not in left and a["old_layer"] not in left
    for name in ("beta", "gamma", "delta"):
        assert set(projects[name].values()) <= left, name
    assert "removed" in out.stdout
    # Then beta, named: its old pair goes, gamma and delta untouched.
    amic_cli("ami", "prune", "--name", "beta", "--yes", cwd=tmp_path, env=env, check=True)
    left = images(ec2)
    assert projects["beta"]["old"] not in left and projects["beta"]["final"] in left
    for name in ("gamma", "delta"):
        assert set(projects[name].values()) <= left, name
    # Without an Amifile here and without --name, prune refuses to guess.
    res = amic_cli("ami", "prune", "--yes", cwd=tmp_path, env=env)
    assert res.returncode != 0 and "--name" in res.stderr
    assert set(projects["gamma"].values()) <= images(ec2)


def test_final_images_need_yes_without_a_terminal(ec2, env, instance, amic_cli, tmp_path):
    p = project(ec2, instance, "web")
    res = amic_cli("ami", "prune", "--name", "web", cwd=tmp_path, env=env, input="")
    assert res.returncode == 1
    assert "--yes" in res.stderr and p["old"] in res.stderr
    assert set(p.values()) <= images(ec2)      # nothing removed, not even the layer


def test_duplicates_of_one_key_are_pruned_to_the_newest_with_their_snapshots(
        ec2, env, instance, amic_cli, tmp_path):
    first = make_ami(ec2, instance, name="dup", key="K", kind="layer", service="web")
    second = make_ami(ec2, instance, name="dup", key="K", kind="layer", service="web")
    final = make_ami(ec2, instance, name="dup", key="F", layers={"web": "K"})
    final_twin = make_ami(ec2, instance, name="dup", key="F", layers={"web": "K"})
    snaps = snapshots_of(ec2, first) + snapshots_of(ec2, final)
    amic_cli("ami", "prune", "--name", "dup", "--yes", cwd=tmp_path, env=env, check=True)
    left = images(ec2)
    assert left >= {second, final_twin}
    assert first not in left and final not in left
    existing = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not set(snaps) & existing


def test_images_in_use_or_shared_survive_unless_forced(fake, ec2, env, instance, amic_cli,
                                                       tmp_path):
    by_template = make_ami(ec2, instance, name="app", key="F1")
    by_instance = make_ami(ec2, instance, name="app", key="F2")
    shared = make_ami(ec2, instance, name="app", key="F3")
    by_config = make_ami(ec2, instance, name="app", key="F4")
    unused = make_ami(ec2, instance, name="app", key="F5")
    current = make_ami(ec2, instance, name="app", key="F6")
    ec2.create_launch_template(LaunchTemplateName="app-lt",
                               LaunchTemplateData={"ImageId": "ami-12345678"})
    ec2.create_launch_template_version(LaunchTemplateName="app-lt",
                                       LaunchTemplateData={"ImageId": by_template})
    ec2.run_instances(ImageId=by_instance, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    ec2.modify_image_attribute(ImageId=shared, LaunchPermission={"Add": [{"UserId": "210987654321"}]})
    import boto3

    autoscaling = boto3.client("autoscaling", region_name=REGION, endpoint_url=fake.moto.url,
                               aws_access_key_id="testing", aws_secret_access_key="testing")
    autoscaling.create_launch_configuration(LaunchConfigurationName="app-lc", ImageId=by_config,
                                            InstanceType="t3.micro")
    res = amic_cli("ami", "prune", "--name", "app", "--yes", cwd=tmp_path, env=env, check=True)
    left = images(ec2)
    assert {by_template, by_instance, shared, by_config, current} <= left, res.stderr
    assert unused not in left
    assert "launch template app-lt version 2" in res.stderr
    assert "launch configuration app-lc" in res.stderr and "shared with 210987654321" in res.stderr
    amic_cli("ami", "prune", "--name", "app", "--yes", "--force", cwd=tmp_path, env=env, check=True)
    assert images(ec2) & {by_template, by_instance, shared, by_config} == set()
    assert current in images(ec2)


def test_ami_ls_shows_and_filters_by_project(ec2, env, instance, amic_cli, tmp_path):
    a = make_ami(ec2, instance, name="alpha", key="A")
    b = make_ami(ec2, instance, name="beta", key="B")
    out = amic_cli("ami", "ls", cwd=tmp_path, env=env, check=True).stdout
    assert a in out and b in out and "alpha" in out
    out = amic_cli("ami", "ls", "--name", "beta", cwd=tmp_path, env=env, check=True).stdout
    assert b in out and a not in out


def test_a_taken_ami_name_fails_the_build_before_anything_is_launched(fake, ec2, env, instance,
                                                                        amic_cli, tmp_path):
    checkout = tmp_path / "Shop App"
    checkout.mkdir()
    (checkout / "Amifile").write_text("FROM debian:12\nSERVICE web\n    INIT true\n")
    ec2.create_image(InstanceId=instance, Name="shop-app-release")
    fake.proxy.reset()
    res = amic_cli("build", "--target", "ec2", *fake.ssh_args(), "--ami-name", "{name}-release",
                   "Amifile", cwd=checkout, env={**env, "XDG_CACHE_HOME": str(tmp_path)})
    assert res.returncode == 1, res.stderr
    assert "'shop-app-release' exists already" in res.stderr
    assert fake.proxy.count("RunInstances") == 0
    assert fake.proxy.count("DescribeImages") >= 1          # it asked EC2, through the proxy
    assert fake.proxy.count("CreateKeyPair", "ImportKeyPair", "CreateSecurityGroup") == 0


def test_the_name_check_uses_the_builds_context(fake, ec2, env, instance, amic_cli, tmp_path):
    """With --context, the name check plans the build as the build will: a COPY from beside
    the Amifile's directory, allowed by the wider context, and the key that comes of it."""
    repo = tmp_path / "repo"
    checkout = repo / "Shop App"
    checkout.mkdir(parents=True)
    (checkout / "Amifile").write_text("FROM debian:12\nSERVICE web\n"
                                      "    COPY ../shared.txt /etc/shared.txt\n")
    (repo / "shared.txt").write_text("shared\n")
    run_env = {**env, "XDG_CACHE_HOME": str(tmp_path)}
    args = ("--target", "ec2", *fake.ssh_args(), "--context", str(repo))
    plan = amic_cli("build", *args, "--dry-run", "--json", "Amifile", cwd=checkout, env=run_env)
    assert plan.returncode == 0, plan.stderr
    key = json.loads(plan.stdout)["final_key"]
    ec2.create_image(InstanceId=instance, Name=f"shop-app-{key[:12]}")
    fake.proxy.reset()
    res = amic_cli("build", *args, "--ami-name", "{name}-{key}", "Amifile", cwd=checkout,
                   env=run_env)
    assert res.returncode == 1, res.stderr
    assert f"'shop-app-{key[:12]}' exists already" in res.stderr
    assert fake.proxy.count("RunInstances") == 0


def test_a_fixed_name_rebuilt_unchanged_is_the_cached_image_not_a_taken_name(
        fake, ec2, env, instance, amic_cli, tmp_path):
    """The AMI that has the fixed name is the build's own final image (its key): the
    unchanged rebuild answers it from the cache; it is no name taken by another image."""
    checkout = tmp_path / "Shop App"
    checkout.mkdir()
    (checkout / "Amifile").write_text("FROM debian:12\nSERVICE web\n    INIT true\n")
    run_env = {**env, "XDG_CACHE_HOME": str(tmp_path)}
    args = ("--target", "ec2", *fake.ssh_args(), "--ami-name", "{name}-release")
    plan = amic_cli("build", *args, "--dry-run", "--json", "Amifile", cwd=checkout, env=run_env)
    assert plan.returncode == 0, plan.stderr
    key = json.loads(plan.stdout)["final_key"]
    made = ec2.create_image(InstanceId=instance, Name="shop-app-release")["ImageId"]
    ec2.create_tags(Resources=[made], Tags=[{"Key": "amic:key", "Value": key},
                                            {"Key": "amic:kind", "Value": "final"}])
    if getattr(fake, "strict", None) is not None:
        fake.strict.consistency.settle()
    fake.proxy.reset()
    res = amic_cli("build", *args, "Amifile", cwd=checkout, env=run_env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == made
    assert fake.proxy.count("RunInstances") == 0


def test_default_ami_names_are_unique_by_construction():
    import datetime as dt

    from amic.targets.ec2 import naming
    from amic.targets.ec2.options import Ec2Options

    tags = {"amic:amifile": "Amifile", "amic:name": "x" * 64}
    when = dt.datetime(2026, 12, 1, 21, 0, 0, 123456, tzinfo=dt.UTC)
    fields = naming.name_fields(tags, "ab" * 32, "20261201-210000-a1b2c3", when)
    name = naming.ami_name(Ec2Options().image_name.format_map(fields))
    assert name == "x" * 64 + "-abababababab-20261201T210000.123Z-20261201-210000-a1b2c3"
    assert len(name) <= 128
    assert naming.fixed_name(Ec2Options().image_name, tags, "ab" * 32) is None
    assert naming.fixed_name("{name}-{key}", tags, "ab" * 32) == "x" * 64 + "-abababababab"


def test_prune_that_cannot_check_use_removes_nothing(fake, ec2, env, instance, amic_cli, tmp_path):
    old = make_ami(ec2, instance, name="safe", key="F1")
    make_ami(ec2, instance, name="safe", key="F2")
    fake.proxy.reset()
    fake.proxy.fail("DescribeLaunchConfigurations", times=1000, code="AccessDenied", status=403)
    res = amic_cli("ami", "prune", "--name", "safe", "--yes", cwd=tmp_path,
                   env={**env, "AWS_ENDPOINT_URL_AUTO_SCALING": fake.proxy.url})
    assert res.returncode == 1, res.stderr
    assert "could not check whether the AMIs are in use" in res.stderr
    assert "Traceback" not in res.stderr
    assert old in images(ec2)
