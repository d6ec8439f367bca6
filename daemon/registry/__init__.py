"""The HTTP face: the OCI distribution API (registry v2) over the daemon's store.

`HttpServer` serves it with the `HttpOptions` the CLI's ``--http*`` flags give;
the daemon (``daemon/_server.py``) runs one beside its gRPC server.
"""

from .server import HttpOptions, HttpServer
from .uploads import UploadSessions, upload_ref

__all__ = ["HttpOptions", "HttpServer", "UploadSessions", "upload_ref"]
