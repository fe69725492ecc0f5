"""Per-client scopes (``clients[].buckets`` and ``clients[].prefix``).

In process: the scope rules of ``proxy.s3.routing`` for every operation the router names, the
config fields, and the two checks the service makes (DeleteObjects' keys, ListBuckets' names).
Through the real proxy in front of moto and rclone: tests/functional/test_client_scope.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, parse_config
from proxy.daemon.server import client_scopes
from proxy.objects.passthrough import PassthroughService
from proxy.s3.api import Request
from proxy.s3.errors import S3Error
from proxy.s3.routing import SCOPED_OPERATIONS, SUBRESOURCES, ClientScope, Route, check_scope, route

PREFIX = "cluster1/"
SCOPE = ClientScope(frozenset({"a"}), PREFIX)


# ------------------------------------------------------------------------------------------
# The rules, in process
# ------------------------------------------------------------------------------------------


def _route(method: str, path: str, query: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Route:
    bucket, _, key = path.lstrip("/").partition("/")
    return route(method, bucket or None, key or None, query or {}, headers or {})


def _allowed(
    target: Route,
    query: dict[str, str] | None = None,
    copy_source: tuple[str, str] | None = None,
    scope: ClientScope = SCOPE,
) -> bool:
    try:
        check_scope(target, query or {}, scope, copy_source)
    except S3Error as err:
        assert (err.code, err.status, err.message) == ("AccessDenied", 403, "Access Denied")
        return False
    return True


OBJECT_REQUESTS = [
    ("GET", {}),
    ("HEAD", {}),
    ("PUT", {}),
    ("DELETE", {}),
    ("POST", {"uploads": ""}),
    ("PUT", {"uploadId": "u", "partNumber": "1"}),
    ("POST", {"uploadId": "u"}),
    ("DELETE", {"uploadId": "u"}),
    ("GET", {"uploadId": "u"}),
]


@pytest.mark.parametrize(("method", "query"), OBJECT_REQUESTS)
def test_object_operations_need_bucket_and_prefix(method: str, query: dict[str, str]) -> None:
    assert _allowed(_route(method, "/a/cluster1/x", query))
    assert not _allowed(_route(method, "/b/cluster1/x", query))  # another bucket
    assert not _allowed(_route(method, "/a/cluster2/x", query))  # outside the prefix
    assert not _allowed(_route(method, "/a/cluster1", query))  # the prefix is a string prefix
    assert not _allowed(_route(method, "/a/cluster1/../cluster2/x", query))  # no dot segments
    assert not _allowed(_route(method, "/a/cluster1/./x", query))


@pytest.mark.parametrize("query", [{}, {"uploadId": "u", "partNumber": "1"}])
def test_copies_check_the_source_too(query: dict[str, str]) -> None:
    target = _route("PUT", "/a/cluster1/dst", query, {"x-amz-copy-source": "/a/cluster1/src"})
    assert target.operation in ("CopyObject", "UploadPartCopy")
    assert _allowed(target, copy_source=("a", "cluster1/src"))
    assert not _allowed(target, copy_source=("b", "cluster1/src"))
    assert not _allowed(target, copy_source=("a", "cluster2/src"))
    assert not _allowed(target, copy_source=None)
    outside = _route("PUT", "/a/cluster2/dst", query, {"x-amz-copy-source": "/a/cluster1/src"})
    assert not _allowed(outside, copy_source=("a", "cluster1/src"))


@pytest.mark.parametrize("query", [{}, {"list-type": "2"}, {"uploads": ""}])
def test_listings_need_a_prefix_inside_the_scope(query: dict[str, str]) -> None:
    target = _route("GET", "/a", query)
    assert target.operation in ("ListObjects", "ListObjectsV2", "ListMultipartUploads")
    assert _allowed(target, {**query, "prefix": "cluster1/"})
    assert _allowed(target, {**query, "prefix": "cluster1/index/"})
    assert not _allowed(target, query)  # no prefix: the whole bucket
    assert not _allowed(target, {**query, "prefix": "cluster1"})
    assert not _allowed(target, {**query, "prefix": "cluster2/"})
    assert not _allowed(target, {**query, "prefix": "cluster1/../"})
    assert not _allowed(_route("GET", "/b", query), {**query, "prefix": "cluster1/"})


def test_bucket_operations_need_the_bucket() -> None:
    for method, query in (("HEAD", {}), ("GET", {"location": ""}), ("POST", {"delete": ""})):
        assert _allowed(_route(method, "/a", query))
        assert not _allowed(_route(method, "/b", query))
    # Whole-bucket changes: never for a client limited to a prefix.
    for method in ("PUT", "DELETE"):
        assert not _allowed(_route(method, "/a"))
        assert _allowed(_route(method, "/a"), scope=ClientScope(frozenset({"a"})))
        assert not _allowed(_route(method, "/b"), scope=ClientScope(frozenset({"a"})))


def test_list_buckets_is_always_routed_through() -> None:
    assert _allowed(_route("GET", "/"))


def test_an_empty_scope_allows_everything() -> None:
    unscoped = ClientScope()
    assert not unscoped.restricted
    assert _allowed(_route("GET", "/b", {}), scope=unscoped)
    assert _allowed(_route("GET", "/b/x/../y"), scope=unscoped)


def test_only_buckets_or_only_prefix() -> None:
    buckets_only = ClientScope(frozenset({"a", "c"}))
    assert _allowed(_route("GET", "/c/anything"), scope=buckets_only)
    assert _allowed(_route("GET", "/a", {}), scope=buckets_only)
    assert not _allowed(_route("GET", "/b/anything"), scope=buckets_only)
    assert not _allowed(_route("GET", "/a/../b/x"), scope=buckets_only)
    prefix_only = ClientScope(prefix="p/")
    assert _allowed(_route("GET", "/any/p/x"), scope=prefix_only)
    assert not _allowed(_route("GET", "/any/q/x"), scope=prefix_only)


def test_an_operation_without_a_rule_is_refused() -> None:
    assert not _allowed(Route("SomeFutureOperation", "a", "cluster1/x"))


def _every_routed_operation() -> set[str]:
    """Every operation ``route`` names, from every method and sub-resource it looks at."""
    queries: list[dict[str, str]] = [
        {},
        {"location": ""},
        {"uploads": ""},
        {"list-type": "2"},
        {"delete": ""},
        {"uploadId": "u"},
        {"partNumber": "1"},
        {"uploadId": "u", "partNumber": "1"},
        *({name: ""} for name in SUBRESOURCES),
    ]
    found = set()
    for method in ("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"):
        for bucket, key in ((None, None), ("a", None), ("a", "k")):
            for query in queries:
                for headers in ({}, {"x-amz-copy-source": "/a/k"}):
                    with contextlib.suppress(S3Error):
                        found.add(route(method, bucket, key, query, headers).operation)
    return found


def test_every_operation_the_router_names_has_a_rule() -> None:
    routed = _every_routed_operation()
    assert len(routed) >= 55, routed
    assert routed <= SCOPED_OPERATIONS, routed - SCOPED_OPERATIONS


def test_config_fields_and_defaults() -> None:
    config = parse_config(
        {
            "clients": [
                {"access_key_id": "all", "secret_access_key": "s1"},
                {"access_key_id": "one", "secret_access_key": "s2", "buckets": ["a"], "prefix": PREFIX},
                {"access_key_id": "pre", "secret_access_key": "s3", "prefix": "p/"},
            ],
            "encryption": {"enabled": False},
        },
        environ={},
    )
    assert config.clients[0].buckets == [] and config.clients[0].prefix == ""
    scopes = client_scopes(config.clients)
    assert scopes("all") is None
    assert scopes("unknown") is None
    assert scopes("one") == SCOPE
    assert scopes("pre") == ClientScope(frozenset(), "p/")
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "clients": [{"access_key_id": "x", "secret_access_key": "s", "buckets": [""]}],
                "encryption": {"enabled": False},
            },
            environ={},
        )
    assert "clients.0.buckets.0" in str(err.value)


# ------------------------------------------------------------------------------------------
# The checks only the service can make, in process
# ------------------------------------------------------------------------------------------


class _Upstream:
    """Answers list_buckets and records every call: what the service would send to the bucket."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        self.calls.append(operation)
        if operation == "list_buckets":
            return {"Buckets": [{"Name": "a"}, {"Name": "b"}], "Owner": {"ID": "o"}}
        if operation == "delete_objects":
            return {"Deleted": [{"Key": o["Key"]} for o in params["Delete"]["Objects"]]}
        raise AssertionError(operation)


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length: int | None = len(data)

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise AssertionError("the service reads a DeleteObjects body whole")

    async def read_all(self, limit: int) -> bytes:
        return self.data


def _delete_body(*keys: str) -> bytes:
    objects = "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
    return f"<Delete>{objects}</Delete>".encode()


async def test_delete_objects_refuses_every_key_if_one_is_out_of_scope() -> None:
    upstream = _Upstream()
    service = PassthroughService(upstream)  # type: ignore[arg-type]
    request = Request(
        "DeleteObjects", "a", None, {"delete": ""}, {}, _Body(_delete_body("cluster1/x", "cluster2/y")), SCOPE
    )  # type: ignore[arg-type]
    with pytest.raises(S3Error) as err:
        await service.handle(request)
    assert err.value.code == "AccessDenied"
    assert upstream.calls == []  # nothing was sent, so nothing was deleted

    request = Request(
        "DeleteObjects", "a", None, {"delete": ""}, {}, _Body(_delete_body("cluster1/x", "cluster1/y")), SCOPE
    )  # type: ignore[arg-type]
    reply = await service.handle(request)
    assert reply.status == 200 and upstream.calls == ["delete_objects"]


async def test_list_buckets_shows_only_the_buckets_in_scope() -> None:
    service = PassthroughService(_Upstream())  # type: ignore[arg-type]
    scoped = await service.handle(Request("ListBuckets", None, None, {}, {}, None, SCOPE))
    assert isinstance(scoped.body, bytes)
    assert b"<Name>a</Name>" in scoped.body and b"<Name>b</Name>" not in scoped.body
    everyone = await service.handle(Request("ListBuckets", None, None, {}, {}))
    assert isinstance(everyone.body, bytes)
    assert b"<Name>a</Name>" in everyone.body and b"<Name>b</Name>" in everyone.body


def test_example_config_shows_the_scope_fields() -> None:
    example = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.example.yaml").read_text())
    client = example["clients"][0]
    assert isinstance(client["buckets"], list) and isinstance(client["prefix"], str)
