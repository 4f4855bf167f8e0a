"""DescribeImages over EC2's Query API without boto3: the ec2 build memo's confirmation.

Why this exists: an unchanged ``amic build --target ec2`` is answered from the
build memo (``amic.engine.memo``) only once EC2 confirms it (see
``Ec2Target.confirm_memo``): two DescribeImages calls. Through boto3 those
cost ~220 ms before the first byte is sent (importing boto3, then building
the EC2 client's ~800 operation methods from its model); here they cost a
few milliseconds: the request is signed with SigV4 by hand (the signature is
checked against botocore's own signer in ``tests/unit/test_ec2_units.py``), sent
with ``urllib`` (which honours ``HTTPS_PROXY``/``NO_PROXY``) and the small XML
answer read with ``xml.etree``.

Nothing here guesses: throttling (HTTP 503, ``RequestLimitExceeded``) is retried
with exponential backoff and full jitter within ``TIMEOUT`` (``THROTTLE_ATTEMPTS``
tries); any other error, or throttling past that, raises :class:`QueryError` (or an
``OSError``), and the caller then runs the normal, boto3-based path, which has
botocore's retries. Where to ask and with which
credentials follows boto3's rules:

- credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and
  ``AWS_SESSION_TOKEN``), as botocore's chain starts with them, when no
  profile is named (``--profile``, ``AWS_PROFILE``); anything else (profiles,
  SSO, roles, instance metadata) through botocore's own chain
  (``botocore.session``: ~80 ms more, still no client is built);
- region: ``--region``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's ``region``
  (as in ``amic.targets.ec2.session.session``);
- endpoint: ``--endpoint-url``, ``AWS_ENDPOINT_URL_EC2``, ``AWS_ENDPOINT_URL``,
  the profile's (``endpoint_url`` or its ``services`` section), else
  ``https://ec2.REGION.amazonaws.com`` (``.com.cn`` in China). FIPS, dual-stack
  and the isolated partitions are left to boto3 (:class:`QueryError`).

A shared config file is only read through botocore, so that any of its
settings is honoured the way boto3 honours it. Credentials are kept in a
:class:`Credentials` whose ``repr`` hides them; nothing here logs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import time
import urllib.parse
from collections.abc import Mapping, Sequence

API_VERSION = "2016-11-15"
TIMEOUT = 5.0
"""Seconds per call: a slow answer is no better than the full path's."""
THROTTLE_ATTEMPTS = 4
"""Tries of a throttled call (RequestLimitExceeded) before handing over to boto3."""
THROTTLED = ("RequestLimitExceeded", "Throttling", "ThrottlingException")


class QueryError(Exception):
    """The fast path cannot (or should not) answer: fall back to boto3."""


class Credentials:
    __slots__ = ("access_key", "secret_key", "token")

    def __init__(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        self.access_key, self.secret_key, self.token = access_key, secret_key, token or None

    def __repr__(self) -> str:
        return "<Credentials (hidden)>"


class Access:
    """Where to send EC2 calls and how to sign them."""

    __slots__ = ("credentials", "endpoint", "region")

    def __init__(self, region: str, endpoint: str, credentials: Credentials) -> None:
        self.region, self.endpoint, self.credentials = region, endpoint, credentials

    def __repr__(self) -> str:
        return f"<Access {self.region} {self.endpoint}>"


_TRUE = ("true", "1", "yes")


def _env(name: str, environ: Mapping[str, str]) -> str | None:
    return environ.get(name) or None


def default_endpoint(region: str) -> str:
    if not region.replace("-", "").isalnum():
        raise QueryError(f"region {region!r}")
    if "-iso" in region:
        raise QueryError(f"region {region}: isolated partition")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://ec2.{region}.{suffix}"


def resolve(*, profile: str | None = None, region: str | None = None,
            endpoint_url: str | None = None, environ: Mapping[str, str] | None = None) -> Access:
    """Region, endpoint and credentials as boto3 would find them (QueryError when unsure)."""
    environ = os.environ if environ is None else environ
    for name in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"):
        if (environ.get(name) or "").lower() in _TRUE:
            raise QueryError(f"{name} is set")
    ignore_configured = ((environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or "").lower()
                         in _TRUE)
    env_endpoint = None if ignore_configured else (
        _env("AWS_ENDPOINT_URL_EC2", environ) or _env("AWS_ENDPOINT_URL", environ))
    region = region or _env("AWS_REGION", environ) or _env("AWS_DEFAULT_REGION", environ)
    key, secret = _env("AWS_ACCESS_KEY_ID", environ), _env("AWS_SECRET_ACCESS_KEY", environ)
    env_creds = None
    if not profile and not environ.get("AWS_PROFILE") and key and secret:
        env_creds = Credentials(key, secret,
                                _env("AWS_SESSION_TOKEN", environ)
                                or _env("AWS_SECURITY_TOKEN", environ))
    config = os.path.expanduser(environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    if env_creds and region and (endpoint_url or env_endpoint or not _has_content(config)):
        # arguments and environment settle all three: boto3 reads no config file for them
        # (one could still set a CA bundle or a proxy: at worst the call fails, and boto3 answers)
        return Access(region, endpoint_url or env_endpoint or default_endpoint(region), env_creds)
    return _resolve_botocore(profile, region, endpoint_url, ignore_configured)


def _has_content(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _resolve_botocore(profile, region, endpoint_url, ignore_configured) -> Access:
    import botocore.exceptions
    import botocore.session
    from botocore.configprovider import ConfiguredEndpointProvider

    try:
        sess = botocore.session.Session(profile=profile)
        if region:
            sess.set_config_variable("region", region)
        region = sess.get_config_variable("region")
        if not region:
            raise QueryError("no region")
        for name in ("use_fips_endpoint", "use_dualstack_endpoint"):
            if str(sess.get_config_variable(name) or "").lower() in _TRUE:
                raise QueryError(f"{name} is set")
        if not endpoint_url and not ignore_configured and not str(
                sess.get_config_variable("ignore_configured_endpoint_urls") or "").lower() in _TRUE:
            endpoint_url = ConfiguredEndpointProvider(
                full_config=sess.full_config, scoped_config=sess.get_scoped_config(),
                client_name="ec2").provide()
        creds = sess.get_credentials()
        if creds is None:
            raise QueryError("no credentials")
        frozen = creds.get_frozen_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise QueryError(type(exc).__name__) from None
    return Access(region, endpoint_url or default_endpoint(region),
                  Credentials(frozen.access_key, frozen.secret_key, frozen.token))


# -- the call ----------------------------------------------------------------------

def _host(url: urllib.parse.SplitResult) -> str:
    default = {"https": 443, "http": 80}.get(url.scheme)
    if url.port is None or url.port == default:
        return url.hostname or ""
    return f"{url.hostname}:{url.port}"


def sign(method: str, url: str, headers: dict[str, str], body: bytes, *, region: str,
         credentials: Credentials, service: str = "ec2", amz_date: str | None = None) -> None:
    """Add SigV4 ``Authorization`` (and ``X-Amz-Date``, the token) to ``headers``, in place.

    Signs every header given plus ``host``, as botocore's ``SigV4Auth`` does.
    """
    amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    parts = urllib.parse.urlsplit(url)
    headers["X-Amz-Date"] = amz_date
    if credentials.token:
        headers["X-Amz-Security-Token"] = credentials.token
    signed = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed.setdefault("host", _host(parts))
    names = sorted(signed)
    canonical = "\n".join([
        method, urllib.parse.quote(parts.path or "/", safe="/~"),
        "&".join(sorted(parts.query.split("&"))) if parts.query else "",
        "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names),
        hashlib.sha256(body).hexdigest()])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + credentials.secret_key).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")


def describe_images(access: Access, *, ImageIds: Sequence[str] = (),
                    Owners: Sequence[str] = (), Filters: Sequence[Mapping] = (),
                    user_agent: str = "amic") -> list[dict]:
    """DescribeImages with boto3's arguments: ``[{ImageId, State, CreationDate, Tags}]`` in
    EC2's order (``Tags`` a dict).

    Raises QueryError for an error answer (throttling included) or a paginated one.
    """
    import urllib.error
    import urllib.request
    import xml.etree.ElementTree as ET

    params = [("Action", "DescribeImages"), ("Version", API_VERSION)]
    params += [(f"ImageId.{i}", v) for i, v in enumerate(ImageIds, 1)]
    params += [(f"Owner.{i}", v) for i, v in enumerate(Owners, 1)]
    for i, filt in enumerate(Filters, 1):
        params.append((f"Filter.{i}.Name", filt["Name"]))
        params += [(f"Filter.{i}.Value.{j}", v) for j, v in enumerate(filt["Values"], 1)]
    body = urllib.parse.urlencode(params).encode()
    url = access.endpoint.rstrip("/") + "/"
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    context = None
    if url.startswith("https:") and os.environ.get("AWS_CA_BUNDLE"):
        import ssl

        context = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])
    deadline = time.monotonic() + TIMEOUT
    for attempt in range(1, THROTTLE_ATTEMPTS + 1):
        # signed afresh each time: the signature carries the time
        sent = dict(headers)
        sign("POST", url, sent, body, region=access.region, credentials=access.credentials)
        sent["Host"] = _host(urllib.parse.urlsplit(url))
        sent["User-Agent"] = user_agent
        request = urllib.request.Request(url, data=body, headers=sent, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as resp:
                data = resp.read()
            break
        except urllib.error.HTTPError as exc:
            code = _error_code(exc)
            pause = random.uniform(0, min(1.0, 0.1 * 2 ** attempt))     # full jitter
            if (code not in THROTTLED or attempt == THROTTLE_ATTEMPTS
                    or time.monotonic() + pause >= deadline):
                raise QueryError(f"DescribeImages: HTTP {exc.code} {code or ''}".strip()) from None
            time.sleep(pause)
    root = ET.fromstring(data)
    found = []
    for child in root:
        tag = child.tag.rpartition("}")[2]
        if tag == "nextToken" and (child.text or "").strip():
            raise QueryError("DescribeImages: paginated answer")
        if tag != "imagesSet":
            continue
        for item in child:
            fields = {el.tag.rpartition("}")[2]: el for el in item}
            text = {name: (el.text or "") for name, el in fields.items()}
            found.append({"ImageId": text.get("imageId", ""),
                          "State": text.get("imageState", ""),
                          "CreationDate": text.get("creationDate", ""),
                          "Tags": _tags(fields.get("tagSet"))})
    return found


def _tags(tag_set) -> dict[str, str]:
    """``<tagSet><item><key/><value/></item>...`` as a dict (empty when there is none)."""
    tags: dict[str, str] = {}
    for item in (tag_set if tag_set is not None else ()):
        pair = {el.tag.rpartition("}")[2]: (el.text or "") for el in item}
        if "key" in pair:
            tags[pair["key"]] = pair.get("value", "")
    return tags


def _error_code(exc) -> str | None:
    """The ``<Code>`` of an EC2 error answer (small: read at most 64 KiB)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(exc.read(65536))
    except (ET.ParseError, OSError, ValueError):
        return None
    return next((el.text for el in root.iter() if el.tag.rpartition("}")[2] == "Code"), None)
