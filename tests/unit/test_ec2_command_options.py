"""Every ec2 command accepts exactly the option rows that apply to it (issue 21).

``amic launch`` makes no AMI: the rows marked ``commands=("build",)`` (name, tags, copies,
sharing, attributes of the AMI) are refused there, not accepted and ignored. Checked
through the real parser, for every row and every command the table is added to.
"""

from __future__ import annotations

import pytest

from amic.cli.main import build_parser
from amic.targets.ec2.flags import AWS_OPTIONS, EC2_OPTIONS
from amic.targets.ec2.options import options_from_values
from amic.errors import UsageError

COMMANDS = {"build": ["build", "--target", "ec2", "Amifile"], "launch": ["launch", "ami-1"]}


def sample(row) -> list[str]:
    flag = row.flags[0]
    if row.action in ("store_true", "store_false"):
        return [flag]
    if row.choices:
        return [flag, list(row.choices)[0]]
    if row.type in (int, float):
        return [flag, "5"]
    if row.metavar and row.metavar.startswith("ARCH"):
        return [flag, "arm64"]
    return [flag, "a=b" if "=" in (row.metavar or "") else "x"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("row", EC2_OPTIONS + AWS_OPTIONS, ids=lambda r: r.flags[0])
def test_a_command_accepts_only_the_rows_it_takes(command, row, capsys):
    argv = COMMANDS[command][:1] + sample(row) + COMMANDS[command][1:]
    parser = build_parser()
    if row.taken_by(command):
        args = parser.parse_args(argv)
        assert getattr(args, row.dest) is not None
    else:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


def test_launch_refuses_the_options_the_issue_names(capsys):
    for flag in ("--ami-name", "--copy-to-region", "--share-with", "--force-deregister",
                 "--ami-tag", "--snapshot-tag", "--skip-create-ami"):
        assert not next(r for r in EC2_OPTIONS if flag in r.flags).taken_by("launch"), flag
    for flag in ("--run-tag", "--launch-volume", "--iops", "--shutdown-behavior"):
        assert next(r for r in EC2_OPTIONS if flag in r.flags).taken_by("launch"), flag


@pytest.mark.parametrize("values, message", [
    ({"throughput": 100}, "throughput 100 MiB/s: gp3 takes 125 to 2000"),
    ({"volume_type": "gp2", "throughput": 200}, "throughput is for gp3 volumes, not gp2"),
    ({"volume_type": "io1"}, "a io1 volume needs iops"),
    ({"volume_type": "io2", "iops": 50}, "iops 50: io2 takes 100 to 256000"),
    ({"volume_type": "st1", "iops": 3000}, "iops is for gp3, io1, io2 volumes, not st1"),
    ({"launch_volumes": ["size=3"]}, "needs device="),
    ({"launch_volumes": ["device=/dev/sdf,size=big"]}, "size 'big': expected a whole number"),
    ({"ami_volumes": ["device=/dev/sdf,colour=red"]}, "unknown key 'colour'"),
    ({"deprecate_at": "2001-01-01T00:00:00Z"}, "in the past"),
    ({"deprecate_at": "soon"}, "expected a UTC time"),
    ({"ami_users": ["12"]}, "12-digit AWS account id"),
    ({"ami_org_arns": ["o-123"]}, "arn:aws:organizations::ACCOUNT:organization/o-"),
    ({"region_kms_keys": ["eu-west-1=k"]}, "eu-west-1 is no --copy-to-region"),
])
def test_volume_share_and_deprecation_values_are_checked_before_the_build(values, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        options_from_values(values)


def test_copies_each_take_their_own_kms_key():
    opts = options_from_values({
        "copy_regions": ["us-west-2:arn:aws:kms:us-west-2:1:key/k", "eu-west-1", "us-east-1"],
        "region_kms_keys": ["eu-west-1=alias/eu"]})
    assert opts.copies("us-east-1") == {"us-west-2": "arn:aws:kms:us-west-2:1:key/k",
                                        "eu-west-1": "alias/eu"}


def _target_from(argv):
    from amic.targets.ec2.target import Ec2Target

    return Ec2Target.from_args(build_parser().parse_args(argv))


def test_amic_toml_next_to_the_amifile_feeds_the_same_table_and_the_command_line_wins(tmp_path):
    (tmp_path / "Amifile").write_text("FROM debian:12\n")
    (tmp_path / "amic.toml").write_text(
        '[ec2]\ninstance-type = "t3.small"\nami-tag = ["team=web", "env=prod"]\n'
        'ena-support = true\niops = 4000\ncopy-to-region = ["us-west-2:alias/k"]\n'
        'no-public-ip = true\n')
    opts = _target_from(["build", "--target", "ec2", "--instance-type", "t3.large",
                         str(tmp_path / "Amifile")]).opts
    assert opts.instance_type == "t3.large"                 # the command line wins
    assert opts.image_tags == {"team": "web", "env": "prod"} and opts.ena_support
    assert opts.iops == 4000 and opts.copies("us-east-1") == {"us-west-2": "alias/k"}
    assert opts.associate_public_ip is False
    # launch reads no amic.toml (it has no Amifile): the defaults
    assert _target_from(["launch", "ami-1"]).opts.instance_type == "t3.micro"


@pytest.mark.parametrize("text, message", [
    ('[ec2]\ncolour = "red"\n', r"\[ec2\] colour: no such option of `amic build`"),
    ('[ec2]\nboot-mode = "bios"\n', r"boot-mode: 'bios': expected one of"),
    ('[ec2]\nena-support = "yes"\n', r"ena-support: expected true or false"),
    ('[ec2]\ninstance-type = ["a", "b"]\n', r"instance-type: expected one value"),
    ('[ec2]\niops = "many"\n', r"iops: 'many': not a valid value"),
    ('[ec2\n', r"amic.toml: "),
    ('[ec2]\niops = 10\n', r"iops 10: gp3 takes 3000 to 80000"),
])
def test_amic_toml_mistakes_are_usage_errors_naming_the_file(tmp_path, text, message):
    (tmp_path / "Amifile").write_text("FROM debian:12\n")
    (tmp_path / "amic.toml").write_text(text)
    with pytest.raises(UsageError, match=message):
        _target_from(["build", "--target", "ec2", str(tmp_path / "Amifile")])
