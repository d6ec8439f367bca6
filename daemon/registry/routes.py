"""Where each request goes: the distribution API's routes, and the grammar of their parts.

`Router` matches a path against the route table and hands the request to the
handler its resource has for the method. The repository names, tags and
digests that paths (and queries) carry are checked here, against the
distribution spec's grammar.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web

from contentd.content import validate_digest
from contentd.errdefs import InvalidArgument, NotFound, Unimplemented

from .errors import digest_invalid, registry_error

if TYPE_CHECKING:  # the handlers parse their paths with the grammar below
    from .blobs import BlobHandler
    from .listing import CatalogHandler, ReferrersHandler, TagsHandler
    from .manifests import ManifestHandler
    from .uploads import UploadHandler

# The distribution spec's grammar: path components of lowercase letters and
# digits, separated by '.', '_', '__' or dashes; tags as docker's.
_NAME: Final = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_MAX_NAME: Final = 255
_TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
#: Where `Router.dispatch` notes which route a request took ("base", "catalog", or one of
#: `_ROUTES`' names), for whoever counts requests by route.
ROUTE: Final = web.RequestKey("route", str)
_ROUTES: Final = (
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<arg>[^/]*)")),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<arg>[^/]+)")),
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<arg>[^/]+)")),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list")),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<arg>[^/]+)")),
)


def is_name(text: str) -> bool:
    """Whether `text` is a repository name the spec allows."""
    return len(text) <= _MAX_NAME and _NAME.fullmatch(text) is not None


def is_tag(text: str) -> bool:
    """Whether `text` is a tag the spec allows."""
    return _TAG.fullmatch(text) is not None


def parse_name(name: str) -> str:
    """`name` if it is a repository name; NAME_INVALID if not."""
    if not is_name(name):
        raise registry_error(InvalidArgument, f"repository name {name[:80]!r}", "NAME_INVALID")
    return name


def parse_digest(text: str) -> str:
    """`text` if it is a digest; DIGEST_INVALID if not."""
    try:
        return validate_digest(text)
    except InvalidArgument:
        raise digest_invalid(f"digest {text[:80]!r} is not <algorithm>:<hex>") from None


#: Each route (`ROUTE`) as a request line names it: its path with the parts that vary as
#: <words>.
_ROUTE_TEMPLATES: Final = {
    "base": "/v2/",
    "catalog": "/v2/_catalog",
    "upload": "/v2/<name>/blobs/uploads/<session>",
    "blob": "/v2/<name>/blobs/<digest>",
    "manifest": "/v2/<name>/manifests/<reference>",
    "tags": "/v2/<name>/tags/list",
    "referrers": "/v2/<name>/referrers/<digest>",
}


def route_template(request: web.Request) -> str:
    """The route `request` took, as a template (``/v2/<name>/blobs/<digest>``), for logs
    that group requests by route; "-" for a path no route serves."""
    return _ROUTE_TEMPLATES.get(request.get(ROUTE, ""), "-")


#: Serves one route: the request, the repository's name, and the route's last
#: part (a digest, tag or upload session; "" where the route has none).
RouteHandler = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]


class Router:
    """The route table over each resource's handlers, and the dispatch of requests through it."""

    def __init__(
        self,
        blobs: BlobHandler,
        uploads: UploadHandler,
        manifests: ManifestHandler,
        tags: TagsHandler,
        referrers: ReferrersHandler,
        catalog: CatalogHandler,
    ) -> None:
        self._catalog = catalog
        #: (route, method, whether the route's last part is given) -> handler.
        self._handlers: dict[tuple[str, str, bool], RouteHandler] = {
            ("blob", "GET", True): blobs.get,
            ("blob", "HEAD", True): blobs.get,
            ("blob", "DELETE", True): blobs.delete,
            ("upload", "POST", False): uploads.start,
            ("upload", "PATCH", True): uploads.patch,
            ("upload", "PUT", True): uploads.complete,
            ("upload", "GET", True): uploads.status,
            ("upload", "DELETE", True): uploads.cancel,
            ("manifest", "GET", True): manifests.get,
            ("manifest", "HEAD", True): manifests.get,
            ("manifest", "PUT", True): manifests.put,
            ("manifest", "DELETE", True): manifests.delete,
            ("tags", "GET", False): tags.get,
            ("referrers", "GET", True): referrers.get,
        }

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Serve `request` with the handler of its route and method."""
        path = request.path
        method = request.method
        if path in ("/v2", "/v2/"):
            request[ROUTE] = "base"
            if method not in ("GET", "HEAD"):
                raise registry_error(Unimplemented, f"{method} /v2/", "UNSUPPORTED")
            return web.json_response({})
        if path == "/v2/_catalog" and method == "GET":
            request[ROUTE] = "catalog"
            return await self._catalog.get(request)
        for route, pattern in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            kind, arg = route, match.groupdict().get("arg")
            if kind == "blob" and arg == "uploads":
                kind, arg = "upload", ""  # POST /v2/<name>/blobs/uploads, no slash
            request[ROUTE] = kind
            name = parse_name(match["name"])
            handler = self._handlers.get((kind, method, bool(arg)))
            if handler is None:
                raise registry_error(Unimplemented, f"{method} {kind}", "UNSUPPORTED")
            return await handler(request, name, arg or "")
        raise registry_error(NotFound, f"no route {path[:80]!r}", "NOT_FOUND")
