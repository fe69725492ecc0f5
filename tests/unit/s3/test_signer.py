"""The proxy's own upstream signatures must be exactly botocore's (frozen clock, same inputs)."""

from __future__ import annotations

from datetime import UTC, datetime

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from yarl import URL

from proxy.s3.signer import Credentials, object_path, sign_request

FROZEN = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
KEYS = ["plain", "n/data/a b+c=d&e", "ünï cødé/%41~*", "(x)!'$,;@:", "a//b/"]


def botocore_headers(
    method: str, url: str, headers: dict[str, str], creds: Credentials, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FROZEN.replace(tzinfo=None))
    request = AWSRequest(method=method, url=url, headers=headers)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), "s3", "eu-west-3").add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [None, "session/token+="])
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "https://s3.example.com"])
def test_object_get_signature_is_botocores(
    key: str, token: str | None, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    headers = {"range": "bytes=-4096", "if-match": '"0123abcd"'}
    ours = sign_request("GET", URL(endpoint), object_path("my-bucket", key), [], headers, creds, "eu-west-3", FROZEN)
    theirs = botocore_headers("GET", f"{endpoint}{ours.url.raw_path}", headers, creds, monkeypatch)
    assert ours.headers["authorization"] == theirs["authorization"]
    assert ours.url.raw_path == object_path("my-bucket", key)
    assert ours.url.raw_host == URL(endpoint).raw_host


def test_listing_query_signature_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials("AKIDEXAMPLE", "secret")
    query = [
        ("prefix", "a b/ü+"),
        ("max-keys", "1000"),
        ("encoding-type", "url"),
        ("list-type", "2"),
        ("continuation-token", "tok/en=="),
    ]
    ours = sign_request(
        "GET", URL("http://127.0.0.1:9000"), object_path("my-bucket"), query, {}, creds, "eu-west-3", FROZEN
    )
    assert ours.url.raw_path == "/my-bucket"
    theirs = botocore_headers("GET", str(ours.url), {}, creds, monkeypatch)
    assert ours.headers["authorization"] == theirs["authorization"]
    assert "host" not in ours.headers  # the HTTP client writes it from the URL


def test_signature_changes_with_every_input() -> None:
    creds = Credentials("AKIDEXAMPLE", "secret")
    endpoint = URL("http://127.0.0.1:9000")

    def auth(**changes: object) -> str:
        args: dict[str, object] = {
            "method": "GET",
            "endpoint": endpoint,
            "path": "/b/k",
            "query": [],
            "headers": {"range": "bytes=0-1"},
            "credentials": creds,
            "region": "us-east-1",
            "now": FROZEN,
        }
        args.update(changes)
        return sign_request(**args).headers["authorization"]  # type: ignore[arg-type]

    base = auth()
    variants = [
        auth(method="HEAD"),
        auth(path="/b/k2"),
        auth(query=[("a", "b")]),
        auth(headers={"range": "bytes=0-2"}),
        auth(credentials=Credentials("AKIDEXAMPLE", "other")),
        auth(region="eu-west-1"),
        auth(endpoint=URL("http://127.0.0.1:9001")),
    ]
    assert all(v != base for v in variants)
