"""The HTTP face: the OCI distribution API (registry v2) over the daemon's store.

`HttpServer` serves it with the `HttpOptions` the CLI's ``--http*`` flags give;
the daemon (``daemon/_server.py``) runs one beside its gRPC server. The
modules split it by concern, as docker distribution splits its handlers:

- `server`: the options, the aiohttp application and its middleware, the thread and loop;
- `routes`: the route table and dispatch, and the grammar of names, tags and digests;
- `errors`: the errors handlers raise, the error answer, the log of malformed requests;
- `context`: what every resource's handlers share;
- `blobs`, `uploads`, `manifests`, `listing`: each resource's handlers (uploads
  with their sessions, manifests with their parsing);
- `auth`: htpasswd basic auth;
- `mirror`: the pull-through mirror of an upstream registry (`Upstream`).

Repositories, manifests and tags are records in the store's own metadata
(`contentd.content.RepositoryIndex`), so the registry takes any `Store` that
keeps them (`RegistryStore`).
"""

from .context import RegistryStore
from .mirror import Upstream
from .routes import ROUTE
from .server import HttpOptions, HttpServer
from .uploads import UploadSessions, upload_ref

__all__ = [
    "ROUTE",
    "HttpOptions",
    "HttpServer",
    "RegistryStore",
    "UploadSessions",
    "Upstream",
    "upload_ref",
]
