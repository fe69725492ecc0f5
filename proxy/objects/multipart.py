"""Multipart uploads of encrypted objects: parts encrypted as they stream, the trailer at Complete."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime

from proxy.cache import PartState, UploadState
from proxy.format.codec import (
    PartEncryptor,
    PartInfo,
    build_trailer,
    new_salt,
)
from proxy.format.keys import DataKey, derive_object_keys
from proxy.format.layout import part_stored_size
from proxy.format.trailer import Trailer
from proxy.objects.passthrough import (
    completed_parts,
    part_number,
    request_body,
    verified_checksum,
    write_conditions,
)
from proxy.objects.views import View, Views
from proxy.s3 import xml
from proxy.s3.api import Chunk, Reply, Request
from proxy.s3.errors import S3Error
from proxy.s3.headers import (
    object_params,
    quote_etag,
    reject_sse_c,
)
from proxy.upstream import Written, write_headers

log = logging.getLogger("proxy.objects")

MIN_PART = 5 << 20  # S3 refuses smaller parts except the last one
# An encrypted upload in this proxy's state untouched this long is aborted (S3 lifecycle rules
# usually abort incomplete uploads after a day); the state is swept at start and then this often.
STALE_UPLOAD_SECONDS = 24 * 3600
SWEEP_INTERVAL_SECONDS = 3600


class MultipartObjects:
    """Multipart uploads into keys stored in the object format (manifests included: a
    manifest's MAC needs its whole body in one PUT, so one sent in parts is stored encrypted)."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.upstream = views.upstream
        self.store = views.store
        self.metrics = views.metrics
        self._sweeper: asyncio.Task[None] | None = None

    # --- multipart -----------------------------------------------------------------------

    async def create_multipart_upload(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        reject_sse_c(request.headers)
        master = await self.views.new_object_key(bucket, key)
        params = self.views.with_hint(object_params(request.headers), master)
        created = await self.upstream.create_upload(bucket, key, params)
        upload_id = created.upload_id
        wrapped = master.wrapped.to_bytes() if isinstance(master, DataKey) else None
        await self.store.put_upload(UploadState(upload_id, bucket, key, master.key_id, new_salt(), wrapped=wrapped))
        self.metrics.multipart_started()
        reply = Reply.xml(xml.initiate_multipart(bucket, key, upload_id))
        reply.headers.update(write_headers(created.headers))
        return reply

    async def _upload(self, request: Request) -> UploadState:
        """The proxy's state for an encrypted upload."""
        state = await self.store.get_upload(request.query["uploadId"])
        if state is None or state.bucket != request.bucket or state.key != request.key:
            raise S3Error(
                "NoSuchUpload",
                "The specified upload does not exist or its state was lost by "
                "the proxy (restarted without its cache); start the upload again.",
                404,
            )
        return state

    async def upload_part(self, request: Request) -> Reply:
        state = await self._upload(request)
        number = part_number(request.query)
        body = request_body(request)
        if body.length is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
        master = await self.views.upload_key(state)
        encryptor = PartEncryptor(derive_object_keys(master, state.salt), number, part_size=body.length)
        stored_size = part_stored_size(body.length)

        async def stored() -> AsyncIterator[Chunk]:
            async for records in self.views.encrypting(encryptor, body):
                yield records
                del records
            yield encryptor.finish()

        if body.length < MIN_PART:
            # It can only be the last part: keep it until Complete sends it with the trailer.
            held = b"".join([piece async for piece in stored()])
            part = PartState(number, body.length, encryptor.md5, len(held), None, held)
            headers: dict[str, str] = {}
        else:
            written = await self.upstream.upload_part(
                state.bucket, state.key, state.upload_id, number, stored(), stored_size
            )
            part = PartState(number, body.length, encryptor.md5, stored_size, written.etag, None)
            headers = write_headers(written.headers)
        await self.store.put_part(state.upload_id, part)
        return Reply(200, {"ETag": quote_etag(part.md5.hex()), **headers, **verified_checksum(body)})

    async def complete_multipart_upload(self, request: Request) -> Reply:
        state = await self._upload(request)
        listed = await completed_parts(request)
        known = await self.store.get_parts(state.upload_id)
        parts: list[PartState] = []
        for entry in listed:
            part = known.get(entry.part_number)
            if part is None or entry.etag.strip('"') != part.md5.hex():
                raise S3Error(
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part "
                    "may not have been uploaded, or the specified entity tag may not match the "
                    "part's entity tag.",
                    400,
                )
            parts.append(part)
        for part in parts[:-1]:
            if part.size < MIN_PART:
                raise S3Error(
                    "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.", 400
                )
        master = await self.views.upload_key(state)
        infos = [PartInfo(p.part_number, p.size, p.md5) for p in parts]
        trailer = build_trailer(master, state.salt, state.key, infos, single_put=False)
        upstream_parts = [(p.part_number, p.upstream_etag or "") for p in parts[:-1]]
        last = parts[-1]
        if last.held is not None:
            final_number, final_body = last.part_number, last.held + trailer
        else:
            upstream_parts.append((last.part_number, last.upstream_etag or ""))
            final_number, final_body = last.part_number + 1, trailer
            if final_number > xml.MAX_PARTS:
                raise S3Error(
                    "InvalidArgument", "the proxy needs one more part for its trailer; use at most 9999 parts", 400
                )
        # An earlier Complete of this upload may have reached the upstream and lost its answer (the
        # proxy was killed, the client gave up waiting): then its object may be stored already.
        done = await self._completed_object(state, trailer) if state.completing else None
        if done is None:
            conditions = await write_conditions(request.headers, self.views.current_etags(state.bucket, state.key))
            await self.store.mark_completing(state.upload_id)
            try:
                final = await self.upstream.upload_part(
                    state.bucket, state.key, state.upload_id, final_number, final_body
                )
                upstream_parts.append((final_number, final.etag))
                done = await self.upstream.complete_upload(
                    state.bucket, state.key, state.upload_id, upstream_parts, conditions
                )
            except S3Error as err:
                # A concurrent (or lost) Complete may have finished it meanwhile: the upstream then
                # answers NoSuchUpload (rclone, AWS) or an error (moto's 500 for a part after it).
                done = await self._completed_object(state, trailer)
                if done is None:
                    if err.code == "NoSuchUpload":  # gone upstream: it can never complete
                        await self.store.drop_upload(state.upload_id)
                    raise
        await self.store.drop_upload(state.upload_id)
        self.metrics.multipart_finished()
        parsed = Trailer.from_tail(trailer)
        stored_size = sum(p.stored_size for p in parts) + len(trailer)
        await self.views.remember_written(
            state.bucket,
            state.key,
            done.etag,
            stored_size,
            View("encrypted", parsed.plaintext_size, parsed.etag, parsed),
        )
        reply = Reply.xml(xml.complete_multipart(done.location, state.bucket, state.key, quote_etag(parsed.etag)))
        reply.headers.update(write_headers(done.headers))
        return reply

    async def _completed_object(self, state: UploadState, trailer: bytes) -> Written | None:
        """The stored object's upstream reply when an earlier Complete of this very upload stored it.

        It is when its verified trailer is exactly the one this Complete would write: the same salt
        (random per upload), key and parts. Anything else (no object, another one, a tampered one)
        gives None.
        """
        try:
            head, view = await self.views.head(state.bucket, state.key)
        except S3Error:
            return None
        if view.trailer is None or view.trailer.record != trailer:
            return None
        log.info(
            "Complete of %r (upload %s): an earlier Complete already stored it (its answer was lost)",
            state.key,
            state.upload_id,
            extra={"event": "complete_recovered", "upload_id": state.upload_id},
        )
        return Written(head.etag, head.headers)

    async def abort_multipart_upload(self, request: Request) -> Reply:
        upload_id = request.query["uploadId"]
        try:
            await self.upstream.abort_upload(request.bucket or "", request.key or "", upload_id)
        except S3Error as err:
            # Gone upstream (aborted or completed elsewhere): the state is of no use either.
            if err.code == "NoSuchUpload":
                await self._forget_upload(upload_id)
            raise
        await self._forget_upload(upload_id)
        return Reply(204)

    async def _forget_upload(self, upload_id: str) -> None:
        if await self.store.get_upload(upload_id) is not None:
            await self.store.drop_upload(upload_id)
            self.metrics.multipart_finished()

    # --- uploads nobody finishes -----------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.abort_idle_uploads(STALE_UPLOAD_SECONDS)
            except Exception as exc:  # the bucket may be down: try again next time
                log.warning("stale upload sweep failed: %s", exc, extra={"event": "stale_upload_sweep_failed"})
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)

    async def abort_idle_uploads(self, idle_seconds: float) -> int:
        """Abort upstream, and forget, the encrypted uploads of this proxy's state untouched for
        ``idle_seconds``: no other proxy can complete them (they lack the state), and a client that
        still wanted one would have sent a part or its Complete. Returns how many were dropped."""
        dropped = 0
        for state in await self.store.list_uploads(idle_since=time.time() - idle_seconds):
            try:
                await self.upstream.abort_upload(state.bucket, state.key, state.upload_id)
            except S3Error as err:
                if err.code != "NoSuchUpload":  # already gone (completed, aborted): just forget it
                    log.warning(
                        "cannot abort stale upload %s of %r: %s %s",
                        state.upload_id,
                        state.key,
                        err.code,
                        err.message,
                        extra={"event": "stale_upload_abort_failed"},
                    )
                    continue
            await self.store.drop_upload(state.upload_id)
            dropped += 1
            idle_hours = (time.time() - state.touched) / 3600
            log.info(
                "aborted stale upload %s of %r in bucket %s (idle %.1f h)",
                state.upload_id,
                state.key,
                state.bucket,
                idle_hours,
                extra={"event": "stale_upload_aborted", "upload_id": state.upload_id},
            )
        return dropped

    async def list_parts(self, request: Request) -> Reply:
        state = await self._upload(request)
        reply = await self.upstream.call("list_parts", Bucket=state.bucket, Key=state.key, UploadId=state.upload_id)
        known = await self.store.get_parts(state.upload_id)
        uploaded = {p["PartNumber"]: p for p in reply.get("Parts", [])}
        parts = []
        for number, part in sorted(known.items()):
            upstream = uploaded.get(number)
            if part.held is None and upstream is None:
                continue
            parts.append(
                {
                    "PartNumber": number,
                    "Size": part.size,
                    "ETag": quote_etag(part.md5.hex()),
                    "LastModified": (upstream or {}).get("LastModified") or datetime.now().astimezone(),
                }
            )
        reply.update(Parts=parts, IsTruncated=False)
        reply.pop("NextPartNumberMarker", None)
        return Reply.xml(xml.list_parts(reply))
