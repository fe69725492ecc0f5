"""Bucket and object sub-resources through the real proxy in front of moto and rclone, driven with
boto3: versioning, policy, lifecycle, tagging, ACLs, ownership controls, encryption, object lock,
legal hold and retention answer exactly what the same call answers straight on the upstream
(status, S3 error code and the document read back), and the calls that describe objects
(ListObjectVersions, GetObjectAttributes, a GET or HEAD of one version) show encrypted objects
with their plaintext view.

The translation by botocore's model is tested in process in tests/unit/upstream/test_subresources.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.support.servers import ProxyProcess, S3Server

DATA_KEY = "node1/backup1/data/ks1/t-1/nb-1-big-Data.db"  # encrypted through the proxy
META_KEY = "node1/backup1/meta/schema.cql"  # stored as it is
SCOPED_KEY, SCOPED_SECRET = "scoped", "the-scoped-secret"

Outcome = tuple[int, str, Any]


def outcome(call: Callable[..., Any], pick: Callable[[dict[str, Any]], Any] = lambda _: None, **kwargs: Any) -> Outcome:
    """(HTTP status, S3 error code or "", what ``pick`` keeps of the answer) of one call."""
    try:
        reply = call(**kwargs)
    except ClientError as err:
        return err.response["ResponseMetadata"]["HTTPStatusCode"], err.response["Error"]["Code"], None
    return reply["ResponseMetadata"]["HTTPStatusCode"], "", pick(reply)


@pytest.fixture
def names(upstream: S3Server) -> Iterator[Callable[[], str]]:
    """Fresh buckets; at the end every version in them is deleted, then the bucket."""
    made: list[str] = []

    def new() -> str:
        made.append(upstream.create_bucket(f"sr-{uuid.uuid4().hex[:16]}"))
        return made[-1]

    yield new
    client = upstream.client()
    for name in made:
        with contextlib.suppress(Exception):
            listed = client.list_object_versions(Bucket=name)
            for entry in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
                client.delete_object(Bucket=name, Key=entry["Key"], VersionId=entry["VersionId"])
        with contextlib.suppress(Exception):
            upstream.delete_bucket(name)


POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteBucket", "Resource": "arn:aws:s3:::BUCKET"}
        ],
    }
)
LIFECYCLE = {"Rules": [{"ID": "expire", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 3}}]}
TAGS = {"TagSet": [{"Key": "team", "Value": "dba"}, {"Key": "tier", "Value": "cold"}]}
ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
OWNERSHIP = {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


def policy_action(reply: dict[str, Any]) -> Any:
    """The action a policy names (rclone answers ``?policy`` with a listing: its start)."""
    try:
        return json.loads(reply["Policy"])["Statement"][0]["Action"]
    except ValueError:
        return reply["Policy"][:38]


def encryption_rules(reply: dict[str, Any]) -> list[dict[str, Any]]:
    return list(reply["ServerSideEncryptionConfiguration"].get("Rules", []))


def configuration_steps(client: Any, bucket: str) -> list[tuple[str, Outcome]]:
    """Every bucket and object configuration call, each with what it answers."""
    steps: list[tuple[str, Outcome]] = []

    def step(
        label: str, call: Callable[..., Any], pick: Callable[[dict[str, Any]], Any] = lambda _: None, **kw: Any
    ) -> None:
        steps.append((label, outcome(call, pick, Bucket=bucket, **kw)))

    client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"sstable bytes", Tagging="kind=data&node=1")
    client.put_object(Bucket=bucket, Key=META_KEY, Body=b"CREATE TABLE t")
    tags = lambda r: sorted((t["Key"], t["Value"]) for t in r.get("TagSet", []))  # noqa: E731
    step("versioning (never set)", client.get_bucket_versioning, lambda r: r.get("Status"))
    step("policy (none)", client.get_bucket_policy, lambda r: r.get("Policy"))
    step("put policy", client.put_bucket_policy, Policy=POLICY.replace("BUCKET", bucket))
    step("get policy", client.get_bucket_policy, policy_action)
    step("policy status", client.get_bucket_policy_status, lambda r: r.get("PolicyStatus"))
    step("delete policy", client.delete_bucket_policy)
    step("policy (deleted)", client.get_bucket_policy)
    step("lifecycle (none)", client.get_bucket_lifecycle_configuration)
    step("put lifecycle", client.put_bucket_lifecycle_configuration, LifecycleConfiguration=LIFECYCLE)
    step("get lifecycle", client.get_bucket_lifecycle_configuration, lambda r: r.get("Rules"))
    step("delete lifecycle", client.delete_bucket_lifecycle)
    step("bucket tags (none)", client.get_bucket_tagging, tags)
    step("put bucket tags", client.put_bucket_tagging, Tagging=TAGS)
    step("get bucket tags", client.get_bucket_tagging, tags)
    step("delete bucket tags", client.delete_bucket_tagging)
    step("tags given on PUT", client.get_object_tagging, tags, Key=DATA_KEY)
    step("put object tags", client.put_object_tagging, Key=DATA_KEY, Tagging=TAGS)
    step("get object tags", client.get_object_tagging, tags, Key=DATA_KEY)
    step("delete object tags", client.delete_object_tagging, Key=DATA_KEY)
    step("object tags (deleted)", client.get_object_tagging, tags, Key=DATA_KEY)
    step("tags of a missing key", client.get_object_tagging, tags, Key="no/such/key")
    grants = lambda r: sorted(g["Permission"] for g in r.get("Grants", []))  # noqa: E731
    step("bucket acl", client.get_bucket_acl, grants)
    step("put bucket acl", client.put_bucket_acl, ACL="private")
    step("object acl", client.get_object_acl, grants, Key=DATA_KEY)
    step("put object acl", client.put_object_acl, ACL="private", Key=META_KEY)
    step("put ownership", client.put_bucket_ownership_controls, OwnershipControls=OWNERSHIP)
    step("get ownership", client.get_bucket_ownership_controls, lambda r: r.get("OwnershipControls"))
    step("delete ownership", client.delete_bucket_ownership_controls)
    step("put encryption", client.put_bucket_encryption, ServerSideEncryptionConfiguration=ENCRYPTION)
    step(
        "get encryption",
        client.get_bucket_encryption,
        lambda r: [
            rule.get("ApplyServerSideEncryptionByDefault")
            for rule in r["ServerSideEncryptionConfiguration"].get("Rules", [])
        ],
    )
    step("delete encryption", client.delete_bucket_encryption)
    step("object lock (not a lock bucket)", client.get_object_lock_configuration)
    step("legal hold (not a lock bucket)", client.get_object_legal_hold, Key=DATA_KEY)
    return steps


def test_configuration_answers_as_the_upstream_does(
    proxy: ProxyProcess, upstream: S3Server, names: Callable[[], str]
) -> None:
    once = {"retries": {"total_max_attempts": 1}}
    direct = configuration_steps(upstream.client(**once), names())
    proxied = configuration_steps(proxy.client(**MEDUSA_CLIENT_CONFIG, **once), names())
    if upstream.name == "rclone":
        # rclone serve s3 ignores these sub-resources: it answers a listing or the object itself,
        # whose content differs (stored sizes, ciphertext; an object botocore cannot parse is a
        # 500 to both, named "500" by the client's botocore, InternalError by the proxy's).
        assert [(label, status) for label, (status, _, _) in proxied] == [
            (label, status) for label, (status, _, _) in direct
        ]
        assert {code for _, (status, code, _) in proxied if status < 500} == {
            code for _, (status, code, _) in direct if status < 500
        }
        return
    assert proxied == direct
    answers = dict(proxied)
    if upstream.name == "moto":  # what S3 answers (rclone answers most of these NotImplemented)
        assert answers["get policy"] == (200, "", "s3:DeleteBucket")
        assert answers["policy (deleted)"][1] == "NoSuchBucketPolicy"
        assert answers["get lifecycle"] == (200, "", LIFECYCLE["Rules"])
        assert answers["tags given on PUT"] == (200, "", [("kind", "data"), ("node", "1")])
        assert answers["get object tags"] == (200, "", [("team", "dba"), ("tier", "cold")])
        assert answers["get bucket tags"] == (200, "", [("team", "dba"), ("tier", "cold")])
        assert answers["tags of a missing key"][:2] == (404, "NoSuchKey")
        assert answers["get encryption"] == (200, "", [{"SSEAlgorithm": "AES256"}])
        assert answers["object lock (not a lock bucket)"][0] == 404


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)  # rclone serve s3 has no object lock
def test_object_lock_settings_pass_through(proxy: ProxyProcess, upstream: S3Server) -> None:
    """On a bucket made with object lock, a retention and a legal hold set through the proxy on an
    encrypted object, and the bucket's lock configuration, are the ones the bucket holds."""
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    raw = upstream.client()
    name = f"lock-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    try:
        # (moto takes a lock configuration on an empty bucket only, and a PUT under a default
        # retention only with a Content-MD5: the configuration comes first, without a rule.)
        client.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
        stored = raw.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"]
        assert stored["ObjectLockEnabled"] == "Enabled"
        assert client.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"] == stored
        client.put_object(Bucket=name, Key=DATA_KEY, Body=b"locked bytes")
        until = datetime.now(UTC) + timedelta(days=1)
        client.put_object_retention(
            Bucket=name, Key=DATA_KEY, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}
        )
        # (moto answers GetObjectRetention with a 500: the bucket's HEAD shows what it holds.)
        held = raw.head_object(Bucket=name, Key=DATA_KEY)
        assert held["ObjectLockMode"] == "GOVERNANCE"
        assert abs(held["ObjectLockRetainUntilDate"] - until) < timedelta(seconds=2)
        client.put_object_legal_hold(Bucket=name, Key=DATA_KEY, LegalHold={"Status": "ON"})
        assert raw.get_object_legal_hold(Bucket=name, Key=DATA_KEY)["LegalHold"] == {"Status": "ON"}
        assert client.get_object_legal_hold(Bucket=name, Key=DATA_KEY)["LegalHold"] == {"Status": "ON"}
        client.put_object_legal_hold(Bucket=name, Key=DATA_KEY, LegalHold={"Status": "OFF"})
        refused = outcome(client.delete_object, Bucket=name, Key=DATA_KEY, VersionId=version_of(raw, name, DATA_KEY))
        assert refused[:2] == (403, "AccessDenied")  # the retention holds, through the proxy too
        # ... until the client asks to bypass it (DeleteObject and DeleteObjects alike).
        client.put_object(Bucket=name, Key=META_KEY, Body=b"locked too")
        client.put_object_retention(
            Bucket=name, Key=META_KEY, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}
        )
        version = version_of(raw, name, DATA_KEY)
        bypassed = outcome(
            client.delete_object, Bucket=name, Key=DATA_KEY, VersionId=version, BypassGovernanceRetention=True
        )
        assert bypassed[:2] == (204, "")
        many = client.delete_objects(
            Bucket=name,
            Delete={"Objects": [{"Key": META_KEY, "VersionId": version_of(raw, name, META_KEY)}]},
            BypassGovernanceRetention=True,
        )
        assert many.get("Errors", []) == [] and len(many["Deleted"]) == 1
        assert raw.list_object_versions(Bucket=name).get("Versions", []) == []
    finally:
        for entry in raw.list_object_versions(Bucket=name).get("Versions", []):
            raw.delete_object(
                Bucket=name, Key=entry["Key"], VersionId=entry["VersionId"], BypassGovernanceRetention=True
            )
        raw.delete_bucket(Bucket=name)


def version_of(raw: Any, bucket: str, key: str) -> str:
    versions = raw.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    return str(next(v["VersionId"] for v in versions if v["Key"] == key))


def test_versions_show_their_plaintext(proxy: ProxyProcess, upstream: S3Server, names: Callable[[], str]) -> None:
    """Two versions of an encrypted object: ListObjectVersions lists each with its plaintext size
    and ETag (as the same writes straight to the bucket list), a GET or HEAD of the older version
    gives that version, GetObjectAttributes the plaintext of each, and a delete of one version
    leaves the other."""
    first, second = b"first version of the sstable", b"second, longer version of the sstable"
    views = []
    for client in (upstream.client(), proxy.client(**MEDUSA_CLIENT_CONFIG)):
        bucket = names()
        view: dict[str, Any] = {
            "enable": outcome(
                client.put_bucket_versioning, Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
            ),
            "status": outcome(client.get_bucket_versioning, lambda r: r.get("Status"), Bucket=bucket),
        }
        client.put_object(Bucket=bucket, Key=DATA_KEY, Body=first)
        client.put_object(Bucket=bucket, Key=DATA_KEY, Body=second)
        view["list"] = outcome(client.list_object_versions, Bucket=bucket, Prefix="node1/")
        if view["list"][0] != 200:  # rclone serve s3: NotImplemented, to the proxy too
            view["current"] = client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()
            views.append(view)
            continue
        versions = client.list_object_versions(Bucket=bucket, Prefix="node1/").get("Versions", [])
        view["listed"] = sorted((v["Key"], v["Size"], v["ETag"], v["IsLatest"]) for v in versions)
        view["encoded"] = [
            v["Key"] for v in client.list_object_versions(Bucket=bucket, EncodingType="url").get("Versions", [])
        ]
        view["attributes"] = outcome(
            client.get_object_attributes,
            lambda r: (r["ETag"], r["ObjectSize"]),
            Bucket=bucket,
            Key=DATA_KEY,
            ObjectAttributes=["ETag", "ObjectSize"],
        )
        older = [v for v in versions if not v["IsLatest"]]
        if older:  # a versioning upstream
            old_id = older[0]["VersionId"]
            view["old body"] = client.get_object(Bucket=bucket, Key=DATA_KEY, VersionId=old_id)["Body"].read()
            head = client.head_object(Bucket=bucket, Key=DATA_KEY, VersionId=old_id)
            view["old head"] = (head["ContentLength"], head["ETag"], head.get("VersionId") == old_id)
            ranged = client.get_object(Bucket=bucket, Key=DATA_KEY, VersionId=old_id, Range="bytes=6-12")
            view["old range"] = (ranged["Body"].read(), ranged["ContentRange"])
            old_attrs = client.get_object_attributes(
                Bucket=bucket, Key=DATA_KEY, VersionId=old_id, ObjectAttributes=["ETag", "ObjectSize"]
            )
            view["old attributes"] = (old_attrs["ETag"], old_attrs["ObjectSize"])
            view["delete old"] = outcome(client.delete_object, Bucket=bucket, Key=DATA_KEY, VersionId=old_id)
            view["left"] = [v["Size"] for v in client.list_object_versions(Bucket=bucket).get("Versions", [])]
        view["current"] = client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()
        views.append(view)
    direct, proxied = views
    assert proxied == direct
    md5 = hashlib.md5(second).hexdigest()
    assert proxied["current"] == second
    if upstream.name == "moto":
        assert proxied["attributes"] == (200, "", (md5, len(second)))
        assert proxied["status"] == (200, "", "Enabled")
        assert proxied["listed"] == [
            (DATA_KEY, len(first), f'"{hashlib.md5(first).hexdigest()}"', False),
            (DATA_KEY, len(second), f'"{md5}"', True),
        ]
        assert proxied["old body"] == first
        assert proxied["old head"] == (len(first), f'"{hashlib.md5(first).hexdigest()}"', True)
        assert proxied["old range"] == (first[6:13], f"bytes 6-12/{len(first)}")
        assert proxied["left"] == [len(second)]


def test_a_fresh_proxy_lists_the_same_versions(
    make_proxy: Callable[..., ProxyProcess], upstream: S3Server, names: Callable[[], str]
) -> None:
    """The versions' plaintext view comes from the bucket alone: a proxy with an empty cache lists
    what the writing proxy lists, in a versioned bucket and in an unversioned one (every object
    its version "null", which moto refuses on a HEAD: the latest version is read as the object)."""
    writer = make_proxy().client(**MEDUSA_CLIENT_CONFIG)
    fresh = make_proxy().client(**MEDUSA_CLIENT_CONFIG)
    for versioned in (True, False):
        bucket = names()
        if versioned:  # (rclone answers NotImplemented, and lists no versions either way)
            outcome(writer.put_bucket_versioning, Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        for body in (b"one", b"two, longer"):
            writer.put_object(Bucket=bucket, Key=DATA_KEY, Body=body)
        lists = [
            outcome(client.list_object_versions, lambda r: r.get("Versions"), Bucket=bucket)
            for client in (writer, fresh)
        ]
        assert lists[0] == lists[1]
        if upstream.name == "moto":
            sizes = sorted(v["Size"] for v in lists[1][2])
            assert sizes == ([3, 11] if versioned else [11])


def test_sub_resources_obey_client_scopes(make_proxy: Callable[..., ProxyProcess], bucket: str) -> None:
    """A client limited to a prefix may tag its own keys but not read or change the bucket's
    configuration, nor list versions outside its prefix."""
    proxy = make_proxy(
        clients=[
            {"access_key_id": "medusa", "secret_access_key": "secret-for-tests"},
            {"access_key_id": SCOPED_KEY, "secret_access_key": SCOPED_SECRET, "prefix": "node1/"},
        ]
    )
    client = proxy.client(access_key_id=SCOPED_KEY, secret_access_key=SCOPED_SECRET, **MEDUSA_CLIENT_CONFIG)
    client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"x")
    assert outcome(client.put_object_tagging, Bucket=bucket, Key=DATA_KEY, Tagging=TAGS)[:2] in (
        (200, ""),
        (501, "NotImplemented"),
    )
    assert outcome(client.get_object_tagging, Bucket=bucket, Key="other/key")[:2] == (403, "AccessDenied")
    assert outcome(client.get_bucket_policy, Bucket=bucket)[:2] == (403, "AccessDenied")
    assert outcome(client.put_bucket_versioning, Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})[:2] == (
        403,
        "AccessDenied",
    )
    assert outcome(client.list_object_versions, Bucket=bucket, Prefix="other/")[:2] == (403, "AccessDenied")


# ------------------------------------------------------------------------------------------
# What cannot coexist with the proxy's encryption: refused as S3 refuses a disallowed request
# ------------------------------------------------------------------------------------------

SSE_C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32}


def test_sse_c_is_refused_on_every_operation(
    proxy_client: Any, raw_client: Any, upstream: S3Server, bucket: str
) -> None:
    """A customer key is refused with a 400 that says why, on writes and reads alike (a GET with a
    key must not quietly read an object stored without one), and nothing is stored."""
    proxy_client.put_object(Bucket=bucket, Key=META_KEY, Body=b"plain")
    calls: list[tuple[Callable[..., Any], dict[str, Any]]] = [
        (proxy_client.put_object, {"Key": DATA_KEY, "Body": b"x"}),
        (proxy_client.create_multipart_upload, {"Key": DATA_KEY}),
        (proxy_client.get_object, {"Key": META_KEY}),
        (proxy_client.head_object, {"Key": META_KEY}),
    ]
    for call, kwargs in calls:
        status, code, _ = outcome(call, Bucket=bucket, **kwargs, **SSE_C)
        assert (status, code) == (400, "InvalidRequest" if call != proxy_client.head_object else "400"), call
    try:
        proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"x", **SSE_C)
    except ClientError as err:
        assert "SSE-C" in err.response["Error"]["Message"]
    keys = [o["Key"] for o in raw_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [META_KEY]
    if upstream.name == "moto":  # (rclone answers this listing NoSuchUpload when there is none)
        assert raw_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_anonymous_and_browser_post_requests_are_denied(
    proxy: ProxyProcess, raw_client: Any, upstream: S3Server, bucket: str
) -> None:
    """The proxy decrypts for whoever it serves, so it serves signed requests only: an anonymous
    GET is AccessDenied even where the stored object is public-read (the bucket then serves its
    ciphertext, never the plaintext), and so is a browser POST upload (a form, no signature)."""
    import urllib.error
    import urllib.request

    proxy.client(**MEDUSA_CLIENT_CONFIG).put_object(Bucket=bucket, Key=DATA_KEY, Body=b"secret rows")
    if upstream.name == "moto":
        raw_client.put_object_acl(Bucket=bucket, Key=DATA_KEY, ACL="public-read")
    form = (
        b'--b\r\nContent-Disposition: form-data; name="key"\r\n\r\nnode1/posted\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\nposted bytes\r\n--b--\r\n'
    )
    requests = [
        urllib.request.Request(f"{proxy.endpoint_url}/{bucket}/{DATA_KEY}"),
        urllib.request.Request(
            f"{proxy.endpoint_url}/{bucket}",
            data=form,
            method="POST",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ),
    ]
    for request in requests:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        assert b"<Code>AccessDenied</Code>" in refused.value.read()
    keys = [o["Key"] for o in raw_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [DATA_KEY]
