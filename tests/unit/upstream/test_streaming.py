"""proxy.upstream.streaming.first_piece_ahead: no request before the body's first piece."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.upstream.streaming import first_piece_ahead


async def _source(pieces: list[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for index, piece in enumerate(pieces):
        if index == fail_after:
            raise ConnectionResetError("client gone")
        yield piece
    if fail_after == len(pieces):
        raise ConnectionResetError("client gone")


async def test_the_first_piece_is_taken_and_handed_on_with_the_rest() -> None:
    taken: list[bytes] = []

    async def watched() -> AsyncIterator[bytes]:
        async for piece in _source([b"a", b"b", b"c"]):
            taken.append(piece)
            yield piece

    body = await first_piece_ahead(watched())
    assert taken == [b"a"]  # before anything iterates the body
    assert [piece async for piece in body] == [b"a", b"b", b"c"]


async def test_a_source_failing_before_its_first_piece_fails_here() -> None:
    with pytest.raises(ConnectionResetError):
        await first_piece_ahead(_source([b"a"], fail_after=0))


async def test_a_later_failure_comes_out_of_the_body() -> None:
    body = await first_piece_ahead(_source([b"a", b"b"], fail_after=1))
    got: list[bytes] = []
    with pytest.raises(ConnectionResetError):
        async for piece in body:
            got.append(piece)
    assert got == [b"a"]


async def test_an_empty_source_is_an_empty_body() -> None:
    assert [piece async for piece in await first_piece_ahead(_source([]))] == []
