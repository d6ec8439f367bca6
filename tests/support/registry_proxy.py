"""A small registry proxy for pull and push tests, in a process of its own: it forwards every
request (and its body) to an upstream registry, logs what it was asked, and misbehaves as a
test tells it to.

`start_registry_proxy(upstream)` runs this file as a script on a free port of 127.0.0.1 and
returns a `RegistryProxy`, whose `configure(...)` sets rules keyed by a text the request's
line (``METHOD /path?query``, the query decoded) must hold, such as a digest (in a blob's or
manifest's path, or an upload's ``digest=``) or a method (``PATCH``):
- `throttle`: serve the answer's body, and take the request's, at that many bytes per second;
- `fail`: answer that status with a registry error body instead of forwarding;
- `fail_after`: a text another request's line must hold, that request having come in before
  a failure is answered (within 10 s), so that a failure meets a transfer under way;
- `corrupt`: serve the body with its first byte changed;
- `stall`: serve that many bytes of the body, then nothing more until a later `configure`
  drops the rule (a transfer held mid-way for as long as a test needs, with no clock);
- `bearer`: demand `Authorization: Bearer <token>`, with the distribution spec's challenge
  naming the proxy's `/token` realm, which hands out tokens (to `user`/`password` by basic
  auth when both are set, else to anyone) and logs each token request;
and whose `log()` lists each request as `{"method", "path", "query", "range", "authorization"}`
(a token request as method TOKEN, its scopes as path). Upload sessions' Locations are
rewritten to point at the proxy.
Running in its own process, its sockets and threads are never the client's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from urllib.request import Request, urlopen

from aiohttp import ClientSession, web
from multidict import CIMultiDict

_CHUNK = 16 * 1024
_FORWARDED = (
    "Content-Type",
    "Content-Length",
    "Docker-Content-Digest",
    "Content-Range",
    "Docker-Upload-UUID",
    "Range",
)
_REQUEST_HEADERS = ("Accept", "Range", "Content-Type", "Content-Length", "Content-Range")


def _line(entry: dict[str, str]) -> str:
    return f"{entry['method']} {entry['path']}?{entry['query']}"


async def _throttled(body: Any, rate: float) -> AsyncIterator[bytes]:
    started = time.monotonic()
    taken = 0
    async for chunk in body.iter_chunked(_CHUNK):
        yield chunk
        taken += len(chunk)
        ahead = taken / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


class _Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.config: dict[str, Any] = {}
        self.requests: list[dict[str, str]] = []
        self.tokens: set[str] = set()
        self.session: ClientSession | None = None

    def began(self, text: str) -> bool:
        """Whether a request whose line holds `text` has come in."""
        return any(text in _line(r) for r in self.requests)

    def rule(self, name: str, entry: dict[str, str]) -> Any:
        line = _line(entry)
        for text, value in self.config.get(name, {}).items():
            if text in line:
                return value
        return None

    async def control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.config = await request.json()
            return web.json_response({})
        return web.json_response(self.requests)

    async def token(self, request: web.Request) -> web.Response:
        bearer = self.config.get("bearer", {})
        self.requests.append(
            {
                "method": "TOKEN",
                "path": " ".join(request.query.getall("scope", [])),
                "query": "",
                "range": "",
                "authorization": request.headers.get("Authorization", ""),
            }
        )
        if bearer.get("user"):
            pair = f"{bearer['user']}:{bearer['password']}".encode()
            if request.headers.get("Authorization") != "Basic " + base64.b64encode(pair).decode():
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}, status=401
                )
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return web.json_response({"token": token, "expires_in": 300})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        entry = {
            "method": request.method,
            "path": path,
            "query": unquote(request.query_string),
            "range": request.headers.get("Range", ""),
            "authorization": request.headers.get("Authorization", ""),
        }
        self.requests.append(entry)
        bearer = self.config.get("bearer")
        if bearer is not None:
            sent = request.headers.get("Authorization", "")
            if sent.removeprefix("Bearer ") not in self.tokens:
                realm = f"http://{request.host}/token"
                repository = path.removeprefix("/v2/")
                for endpoint in ("/blobs/", "/manifests/"):
                    repository = repository.split(endpoint)[0]
                actions = "pull" if request.method in ("GET", "HEAD") else "pull,push"
                challenge = (
                    f'Bearer realm="{realm}",service="proxy",'
                    f'scope="repository:{repository}:{actions}"'
                )
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    status=401,
                    headers={"WWW-Authenticate": challenge},
                )
        failure = self.rule("fail", entry)
        if failure is not None:
            await request.read()
            awaited = self.config.get("fail_after")
            deadline = time.monotonic() + 10
            while awaited and time.monotonic() < deadline and not self.began(awaited):
                await asyncio.sleep(0.01)
            code = {400: "DIGEST_INVALID", 404: "BLOB_UNKNOWN"}.get(failure, "UNKNOWN")
            return web.json_response(
                {"errors": [{"code": code, "message": f"injected failure {failure}"}]},
                status=failure,
            )
        # Repeated headers (skopeo sends an Accept per media type) are all forwarded.
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k in _REQUEST_HEADERS)
        rate = self.rule("throttle", entry)
        body = None
        if request.can_read_body:
            body = _throttled(request.content, rate) if rate else request.content
        assert self.session is not None
        async with self.session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name in _FORWARDED:
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            if "Location" in upstream.headers:
                response.headers["Location"] = upstream.headers["Location"].replace(
                    self.upstream, f"http://{request.host}"
                )
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            corrupt = self.rule("corrupt", entry)
            first = True
            started = time.monotonic()
            sent = 0
            async for received in upstream.content.iter_chunked(_CHUNK):
                chunk = received
                if corrupt and first and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                first = False
                stall = self.rule("stall", entry)
                if stall is not None and sent + len(chunk) > stall:
                    before = max(0, stall - sent)
                    await response.write(chunk[:before])
                    chunk = chunk[before:]
                    sent += before
                    while self.rule("stall", entry) is not None:
                        await asyncio.sleep(0.01)
                await response.write(chunk)
                sent += len(chunk)
                if rate:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await response.write_eof()
            return response


def _serve(upstream: str) -> None:
    proxy = _Proxy(upstream)
    app = web.Application()
    app.router.add_route("*", "/_proxy", proxy.control)
    app.router.add_get("/token", proxy.token)
    app.router.add_route("*", "/{tail:.*}", proxy.forward)

    async def main() -> None:
        proxy.session = ClientSession(auto_decompress=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"proxy on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass
class RegistryProxy:
    """A running proxy: `url`, and its host (``127.0.0.1:PORT``) for references."""

    process: subprocess.Popen[str]
    url: str

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def configure(self, **config: Any) -> None:
        """Replace the proxy's rules (see the module) and nothing else."""
        body = json.dumps(config).encode()
        request = Request(
            f"{self.url}/_proxy", body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urlopen(request, timeout=10) as answer:
            answer.read()

    def log(self) -> list[dict[str, str]]:
        with urlopen(f"{self.url}/_proxy", timeout=10) as answer:
            found: list[dict[str, str]] = json.loads(answer.read())
        return found

    def gets(self, digest: str) -> list[dict[str, str]]:
        """The GETs of blob or manifest `digest` so far."""
        return [r for r in self.log() if r["method"] == "GET" and r["path"].endswith(digest)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_registry_proxy(upstream: str) -> RegistryProxy:
    """Run a proxy in front of the registry at `upstream` (``http://HOST:PORT``)."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), upstream],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("proxy on "):
        process.kill()
        raise RuntimeError(f"the registry proxy did not start: {line!r}")
    return RegistryProxy(process, line.split()[-1])


if __name__ == "__main__":
    _serve(sys.argv[1])
