"""Registry credentials and authorization: auth files, basic auth and bearer tokens.

Credentials are read as skopeo and docker read them: the ``auths`` map of
``$REGISTRY_AUTH_FILE`` (else ``${XDG_RUNTIME_DIR}/containers/auth.json``),
then of ``~/.docker/config.json``; an entry's ``auth`` is base64 of
``user:password``, and the most specific key wins (``host/team/app`` before
``host/team`` before ``host``). Credential helpers are not run.

A registry asks for authorization with a 401 and a ``WWW-Authenticate``
challenge. ``Basic`` is answered with the credentials; ``Bearer realm=...,
service=...,scope=...`` with a token from the realm (the token flow of the
distribution spec, asked for with the credentials, if any, or anonymously),
cached per scope until it expires.

Finding credentials loads no HTTP client (aiohttp is imported where a token
is fetched): a pull through a daemon sends them on without one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from contentd.errdefs import InvalidArgument, Unauthenticated, from_http, wrap

from ._reference import DOCKER_HUB

if TYPE_CHECKING:
    import aiohttp

#: The keys Docker Hub's credentials may be stored under.
_HUB_KEYS: Final = ("docker.io", "index.docker.io", "registry-1.docker.io")
#: How long a token lives when its answer does not say (the spec's default).
_DEFAULT_TOKEN_SECONDS: Final = 60
#: Renew a token this long before it expires.
_TOKEN_MARGIN: Final = 5.0
_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or an identity token in place of the password)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=...)"

    def basic(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


def auth_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """The auth files looked in, in order (whether they exist or not)."""
    env = os.environ if env is None else env
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    elif env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    home = env.get("HOME") or str(Path.home())
    files.append(Path(home) / ".docker" / "config.json")
    return files


def _normalize_key(key: str) -> str:
    """An auths key as a host[/path]: docker's legacy keys are URLs."""
    key = key.removeprefix("https://").removeprefix("http://").rstrip("/")
    if key.endswith("/v1") or key.endswith("/v2"):
        key = key[:-3]
    host, sep, path = key.partition("/")
    if host in _HUB_KEYS:
        host = DOCKER_HUB
    return f"{host}{sep}{path}"


def _decode(entry: object, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(f"auth file {where}: an auth entry is not base64") from None
        if not sep:
            raise InvalidArgument(f"auth file {where}: an auth entry is not user:password")
        return Credentials(user, password)
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials("<token>", token)
    return None


def find_credentials(
    host: str,
    repository: str,
    *,
    auth_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials | None:
    """The credentials the auth files hold for `repository` on `host`, if any."""
    wanted = [f"{host}/{repository}"]
    parts = repository.split("/")
    wanted += [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts) - 1, 0, -1)]
    wanted.append(host)
    files = [Path(auth_file)] if auth_file is not None else auth_files(env)
    for path in files:
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"auth file {path}: {exc}") from None
        auths = document.get("auths") if isinstance(document, dict) else None
        if not isinstance(auths, dict):
            continue
        entries = {_normalize_key(str(key)): entry for key, entry in auths.items()}
        for key in wanted:
            if key in entries:
                found = _decode(entries[key], str(path))
                if found is not None:
                    return found
    return None


def repository_scope(repository: str, actions: str = "pull") -> str:
    """The token scope for `actions` (``pull``, ``pull,push``) on `repository`."""
    return f"repository:{repository}:{actions}"


@dataclass(frozen=True)
class Challenge:
    """A ``WWW-Authenticate`` challenge: its scheme (lower case) and parameters."""

    scheme: str
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header, or None if it has none."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        found = _PARAM.match(rest, position)
        if found is None or found.end() == position:
            break
        quoted, bare = found.group(2), found.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
        params[found.group(1).lower()] = value
        position = found.end()
    return Challenge(scheme.lower(), params)


@dataclass
class _Token:
    value: str
    expires: float


class Authorizer:
    """Answers one registry's challenges and authorizes requests per scope.

    A scope is one token scope, or several separated by spaces (a mount asks
    to push to one repository and pull from another). Once the registry has
    asked for bearer tokens, every request asks the token cache for its scope
    first, so a transfer makes one round trip to the realm per scope, not one
    401 per request.
    """

    def __init__(self, session: aiohttp.ClientSession, credentials: Credentials | None) -> None:
        self._session = session
        self._credentials = credentials
        self._scheme: str | None = None
        self._bearer: Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._fetching: dict[str, asyncio.Future[_Token]] = {}

    async def header(self, scope: str) -> str | None:
        """The Authorization header for a request in `scope`, if the registry wants one."""
        if self._scheme == "basic" and self._credentials is not None:
            return self._credentials.basic()
        if self._scheme == "bearer" and self._bearer is not None:
            token = await self._token(scope, self._bearer)
            return f"Bearer {token.value}" if token.value else None
        return None

    async def challenged(self, header: str, scope: str, sent: str | None) -> bool:
        """Take in a 401's challenge; whether a retry may now succeed.

        `sent` is the Authorization header the refused request carried: when
        it was already the answer to this challenge, a retry is pointless.
        """
        challenge = parse_challenge(header)
        if challenge is None:
            return False
        if challenge.scheme == "basic":
            if self._credentials is None or sent == self._credentials.basic():
                return False
            self._scheme = "basic"
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        if sent is not None and sent.startswith("Bearer "):
            self._tokens.pop(scope, None)
            if self._bearer == challenge:
                return False
        self._scheme, self._bearer = "bearer", challenge
        await self._token(scope, challenge)
        return True

    async def _token(self, scope: str, challenge: Challenge) -> _Token:
        cached = self._tokens.get(scope)
        if cached is not None and cached.expires > time.monotonic():
            return cached
        pending = self._fetching.get(scope)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_token(scope, challenge))
            self._fetching[scope] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(scope, None))
        token = await asyncio.shield(pending)
        self._tokens[scope] = token
        return token

    async def _fetch_token(self, scope: str, challenge: Challenge) -> _Token:
        realm = challenge.params["realm"]
        # One parameter per scope, as the token spec has a request for several.
        query = [("scope", each) for each in scope.split(" ")]
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        headers = {}
        if self._credentials is not None:
            headers["Authorization"] = self._credentials.basic()
        doing = f"getting a token for {scope} from {realm}"
        import aiohttp  # noqa: PLC0415 (see the module)

        try:
            async with self._session.get(realm, params=query, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise wrap(from_http(response.status, body), doing)
        except aiohttp.ClientError as exc:
            raise Unauthenticated(f"{doing}: {exc}") from None
        try:
            answer = json.loads(body)
            value = answer.get("token") or answer.get("access_token") or ""
            lifetime = float(answer.get("expires_in") or _DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError):
            raise Unauthenticated(f"{doing}: the answer is not a token") from None
        if not isinstance(value, str):
            raise Unauthenticated(f"{doing}: the answer is not a token")
        return _Token(value, time.monotonic() + max(0.0, lifetime - _TOKEN_MARGIN))
