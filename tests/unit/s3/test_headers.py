"""proxy.s3.headers: aws-chunked is a request's framing, never an object's Content-Encoding."""

from __future__ import annotations

import pytest

from proxy.s3.headers import object_params, without_aws_chunked


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("aws-chunked", ""),
        ("aws-chunked,gzip", "gzip"),
        ("gzip, AWS-Chunked", "gzip"),
        ("gzip,br", "gzip,br"),
        ("", ""),
    ],
)
def test_without_aws_chunked(stored: str, shown: str) -> None:
    assert without_aws_chunked(stored) == shown


def test_object_params_never_forward_aws_chunked() -> None:
    assert "ContentEncoding" not in object_params({"Content-Encoding": "aws-chunked"})
    assert object_params({"content-encoding": "aws-chunked,gzip"})["ContentEncoding"] == "gzip"
