"""Medusa manifests through the proxy: stored with the stored objects' sizes, read back as written."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from proxy.cache import version_of
from proxy.conditions import check_conditions, parse_range
from proxy.manifest import Stored, object_paths, restore, rewrite
from proxy.objects.core import ObjectsCore, View, if_match
from proxy.s3.headers import (
    object_params,
    quote_etag,
)
from proxy.service import (
    Reply,
    Request,
    visible_headers,
)

log = logging.getLogger("proxy.objects")

MAX_MANIFEST = 256 << 20  # rewritten in memory; Medusa writes about 200 bytes per SSTable


class ManifestObjects(ObjectsCore):
    # --- manifests -----------------------------------------------------------------------

    async def _put_manifest(self, request: Request, bucket: str, key: str) -> Reply:
        """Store a manifest whose entries describe the stored (encrypted) objects."""
        body = await self._body(request).read_all(MAX_MANIFEST)
        paths = object_paths(body)
        stored_body = body
        if paths is None:
            log.warning("%r is named like a manifest but is not one; stored unchanged", key)
        else:
            stored = await self._stored_objects(bucket, paths)
            stored_body = rewrite(body, stored) or body
            if stored_body is body and stored:
                log.warning("manifest %r could not be rewritten byte-exactly; stored unchanged", key)
        params = object_params(request.headers)
        reply = await self.upstream.call("put_object", Bucket=bucket, Key=key, Body=stored_body, **params)
        etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
        await self._remember_written(bucket, key, reply.get("ETag", ""), len(stored_body),
                                     View("plaintext", len(body), etag))
        return Reply(200, {"ETag": quote_etag(etag)})

    async def _stored_objects(self, bucket: str, paths: list[str]) -> dict[str, Stored]:
        """Stored size and upstream ETag of the encrypted objects among ``paths``."""
        wanted = {path for path in paths if self.policy.encrypts(path)}
        found: dict[str, dict[str, Any]] = {}
        for prefix in sorted({path.rpartition("/")[0] + "/" for path in wanted}):
            token: str | None = None
            while True:
                params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
                if token:
                    params["ContinuationToken"] = token
                page = await self.upstream.call("list_objects_v2", **params)
                found.update({o["Key"]: o for o in page.get("Contents", []) if o["Key"] in wanted})
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
        missing = wanted - found.keys()
        if missing:
            log.warning("manifest names %d object(s) missing from the bucket, e.g. %r", len(missing),
                        sorted(missing)[0])

        async def encrypted(entry: dict[str, Any]) -> bool:
            view = await self.view_of(bucket, entry["Key"], entry.get("ETag", ""), int(entry["Size"]),
                                      entry.get("LastModified"))
            return view.kind == "encrypted"

        entries = list(found.values())
        kinds = await asyncio.gather(*(encrypted(entry) for entry in entries))
        return {entry["Key"]: Stored(int(entry["Size"]), str(entry.get("ETag", "")).strip('"'))
                for entry, is_encrypted in zip(entries, kinds, strict=True) if is_encrypted}

    async def _manifest_view(self, bucket: str, key: str, etag: str, size: int,
                             last_modified: object) -> tuple[View, bytes | None]:
        """Size and ETag of the manifest as Medusa wrote it (and its bytes, when they were read)."""
        version = version_of(etag, size, last_modified)
        cached = (await self.store.get_views(bucket, [(key, version)])).get((key, version))
        self.metrics.cache_lookup(hit=cached is not None)
        if cached is not None:
            return View(cached.kind, cached.size, cached.etag), None
        original = await self._read_manifest(bucket, key, etag)
        view = View("plaintext", len(original), hashlib.md5(original, usedforsecurity=False).hexdigest())
        await self._remember(bucket, key, version, view)
        return view, original

    async def _read_manifest(self, bucket: str, key: str, etag: str) -> bytes:
        return restore(await self.upstream.read(limit=MAX_MANIFEST, Bucket=bucket, Key=key, **if_match(etag)))

    async def _get_manifest(self, request: Request, bucket: str, key: str) -> Reply:
        head = await self.upstream.call("head_object", Bucket=bucket, Key=key)
        view, original = await self._manifest_view(bucket, key, head.get("ETag", ""),
                                                   int(head.get("ContentLength", 0)), head.get("LastModified"))
        check_conditions(request.headers, view.etag, head["LastModified"])
        if original is None:
            original = await self._read_manifest(bucket, key, head.get("ETag", ""))
        wanted = parse_range(request.headers.get("range"), len(original))
        headers = visible_headers(head)
        headers["ETag"] = quote_etag(view.etag)
        headers["Accept-Ranges"] = "bytes"
        if wanted is None:
            return Reply(200, headers, original, len(original))
        headers["Content-Range"] = wanted.content_range(len(original))
        part = original[wanted.first:wanted.last + 1]
        return Reply(206, headers, part, len(part))

