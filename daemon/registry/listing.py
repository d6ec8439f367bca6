"""Listings: a repository's tags (a page, or all of them streamed), the catalog, and referrers."""

from __future__ import annotations

import json
import logging
from typing import Final
from urllib.parse import quote, urlencode

from aiohttp import web

from contentd.errdefs import InvalidArgument, NotFound

from .context import REGISTRY_HEADERS, ResourceHandler
from .errors import registry_error
from .manifests import OCI_INDEX
from .routes import parse_digest

#: Repositories in one page when the client does not say (tags are all listed).
DEFAULT_PAGE: Final = 1000
MAX_PAGE: Final = 10_000
#: Tags read from the index per step while a whole tag list streams out.
TAG_STREAM_PAGE: Final = 1000
#: The Content-Type of the registry's JSON answers.
JSON_TYPE: Final = "application/json; charset=utf-8"

_log = logging.getLogger("contentd.daemon")


def _page_size(request: web.Request) -> int | None:
    """The page size `n` a listing asks for; None when it asks for none."""
    text = request.query.get("n")
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise registry_error(
            InvalidArgument,
            f"page size n={text[:20]!r}: must be a whole number",
            "PAGINATION_NUMBER_INVALID",
        )
    return min(int(text), MAX_PAGE)


def _next_link(path: str, limit: int, last: str) -> str:
    return f'<{path}?{urlencode({"n": limit, "last": last})}>; rel="next"'


class TagsHandler(ResourceHandler):
    """``/v2/<name>/tags/list``: the tags whose manifests the store still holds."""

    async def get(self, request: web.Request, name: str, _: str) -> web.StreamResponse:
        """The repository's tags in lexical order: a page with `n`, else all of them."""
        limit = _page_size(request)
        last = request.query.get("last", "")
        if not await self._run(self._index.repository_exists, self._namespace, name):
            raise registry_error(NotFound, f"repository {name}", "NAME_UNKNOWN", name=name)
        if limit is None:
            return await self._stream(request, name, last)
        tags = await self._run(self._live_tags, name, last, limit + 1)
        response = web.json_response({"name": name, "tags": tags[:limit]})
        if len(tags) > limit and limit:
            response.headers["Link"] = _next_link(
                f"/v2/{quote(name)}/tags/list", limit, tags[limit - 1]
            )
        return response

    async def _stream(self, request: web.Request, name: str, last: str) -> web.StreamResponse:
        """Every tag after `last`, written out a page at a time: never one huge string."""
        response = web.StreamResponse(headers={"Content-Type": JSON_TYPE, **REGISTRY_HEADERS})
        await response.prepare(request)
        await response.write(f'{{"name": {json.dumps(name)}, "tags": ['.encode())
        separator = ""
        after: str | None = last
        try:
            while after is not None:
                live, after = await self._run(self._tag_page, name, after, TAG_STREAM_PAGE)
                if live:
                    await response.write((separator + json.dumps(live)[1:-1]).encode())
                    separator = ", "
        except Exception:
            # The status is sent: cut the answer short rather than end a list
            # that lacks tags. The client sees a broken body, not a short list.
            _log.exception("listing tags of %s", name)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write(b"]}")
        await response.write_eof()
        return response

    def _tag_page(self, name: str, after: str, limit: int) -> tuple[list[str], str | None]:
        """The live tags among the next `limit` tags after `after`, and where the next page starts.

        A manifest deleted over gRPC (`ctr content rm`) leaves its tags in the
        index, where reading them answers MANIFEST_UNKNOWN; they are not listed
        (and are again if the manifest is stored again). The next page starts
        after the last tag read, live or not; None once none are left.
        """
        rows = self._index.tags(self._namespace, name, after=after, limit=limit)
        stored: dict[str, bool] = {}
        live = []
        for tag, digest in rows:
            if digest not in stored:
                stored[digest] = self._stored(digest)
            if stored[digest]:
                live.append(tag)
        return live, (rows[-1][0] if len(rows) == limit else None)

    def _live_tags(self, name: str, after: str, limit: int) -> list[str]:
        """Up to `limit` live tags of `name` in lexical order after `after` (see `_tag_page`)."""
        live: list[str] = []
        start: str | None = after
        while start is not None and len(live) < limit:
            found, start = self._tag_page(name, start, limit - len(live))
            live += found
        return live


class CatalogHandler(ResourceHandler):
    """``/v2/_catalog``: the namespace's repositories, a page at a time."""

    async def get(self, request: web.Request) -> web.StreamResponse:
        """A page of repository names in lexical order, `n` of them (DEFAULT_PAGE if unsaid)."""
        limit = _page_size(request)
        if limit is None:
            limit = DEFAULT_PAGE
        last = request.query.get("last", "")
        names = await self._run(
            self._index.repositories, self._namespace, after=last, limit=limit + 1
        )
        response = web.json_response({"repositories": names[:limit]})
        if len(names) > limit and limit:
            response.headers["Link"] = _next_link("/v2/_catalog", limit, names[limit - 1])
        return response


class ReferrersHandler(ResourceHandler):
    """``/v2/<name>/referrers/<digest>``: the manifests whose subject is that digest."""

    async def get(self, request: web.Request, name: str, arg: str) -> web.StreamResponse:
        """An OCI index of the referrers' descriptors, filtered by `artifactType` if given."""
        subject = parse_digest(arg)
        artifact_type = request.query.get("artifactType") or None
        manifests = await self._run(
            self._index.referrers, self._namespace, name, subject, artifact_type
        )
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        # Exactly the media type, as the spec requires: no charset parameter.
        response = web.Response(body=body.encode(), headers={"Content-Type": OCI_INDEX})
        if artifact_type is not None:
            response.headers["OCI-Filters-Applied"] = "artifactType"
        return response
