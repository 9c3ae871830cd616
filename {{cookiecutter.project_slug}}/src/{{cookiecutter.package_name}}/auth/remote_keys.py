"""A remote issuer's public keys (JWKS), fetched over HTTP and kept bounded.

With APP_JWT_JWKS_URL (or APP_OIDC_ISSUER, whose metadata names the JWKS URL) this
service verifies tokens signed elsewhere. Where JWKS clients in the wild go wrong, and what
this one does instead:

- A cache keyed by the `kid`s tokens name grows with what attackers send. Here the key set is
  only ever what the issuer published (at most `MAX_KEYS`), replaced whole on each good fetch.
- One fetch per unknown `kid` lets anyone make this service hammer the issuer. Here an unknown
  `kid` triggers at most one fetch per `UNKNOWN_KID_INTERVAL_SECONDS`, shared by every request
  waiting for it; requests beyond that get 401 without any I/O.
- A failed refresh that drops the keys turns an issuer hiccup into an outage. Here the last
  good set stays until a fetch returns a usable one.

Every fetch has explicit timeouts and a size cap, and follows no redirects. Keys are refreshed
in the background as the issuer's `Cache-Control: max-age` says, within `REFRESH_BOUNDS`. Until
the first good fetch the service is not ready (`/health/ready` answers 503).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from jose import jwk
from jose.backends.base import Key
from opentelemetry.trace import Span

from ..settings import Settings
from ..tracing import Tracing
from .tokens import KID_PATTERN, TOKEN_ERRORS

logger = logging.getLogger(__name__)

MAX_KEYS = 16  # an issuer publishes its current key and one or two others
MAX_DOCUMENT_BYTES = 64 * 1024  # a 16-key JWKS is a few KiB; stop reading far past that
UNKNOWN_KID_INTERVAL_SECONDS = 30.0  # at most one fetch this often for unknown kids
REFRESH_BOUNDS = (60.0, 24 * 60 * 60.0)  # whatever max-age says, refresh within these
DEFAULT_REFRESH_SECONDS = 300.0  # when the issuer sends no max-age
NOT_JSON_ERRORS = (ValueError, RecursionError)  # json.loads: not JSON, or nested too deeply
RETRY_SECONDS = (1.0, 30.0)  # after a failed fetch: first retry, doubling up to the last
RSA_BITS = (2048, 8192)  # weaker keys are refused; larger ones only cost verification time
MAX_AGE_PATTERN = re.compile(r"(?:^|[,\s])max-age=\"?(\d{1,10})\"?(?:$|[,\s])", re.IGNORECASE)
# Each fetch is a client span (with tracing on) named by what it fetches; its attributes are the
# method and the status, never the URL, which may carry credentials.
FETCH_ATTRIBUTES = {"http.request.method": "GET"}
# Members of a private JWK: a published key holding any of them is a leak, not a key to use.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class FetchError(Exception):
    """Why a fetch gave no usable key set (a short reason, safe to log)."""


class RemoteKeys:
    """The issuer's verification keys by `kid`: what `TokenVerifier` looks keys up in.

    `start()` (in the app's lifespan) makes the first fetch and starts the background refresh;
    `close()` stops it. `verification_key()` never does I/O; `refresh_for_unknown_kid()` is the
    one place a request may wait for a fetch, and it is gated and shared.
    """

    def __init__(self, settings: Settings, tracing: Tracing | None = None) -> None:
        self._tracing = tracing or Tracing()  # never started: no spans, nothing imported
        self._algorithm = settings.jwt_algorithm
        self._oidc_issuer = settings.oidc_issuer
        self._jwks_url = settings.jwt_jwks_url  # with OIDC: found by discovery
        self._timeout = settings.jwt_jwks_timeout_seconds
        self._client: httpx.AsyncClient | None = None  # made in start(), closed in close()
        self._keys: dict[str, Key] = {}  # replaced whole, never added to
        self._fetching: asyncio.Task[bool] | None = None
        self._last_kid_fetch = float("-inf")  # time.monotonic() of the last one for a kid
        self._refresh_seconds = DEFAULT_REFRESH_SECONDS
        self._failures = 0
        self._background: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """At least one good fetch has happened: tokens can be verified."""
        return bool(self._keys)

    def verification_key(self, kid: str) -> Key | None:
        return self._keys.get(kid)

    async def start(self) -> None:
        """Fetch once (a failure is logged, and retried in the background), then keep fresh."""
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),  # connect, read, write and pool, each
            follow_redirects=False,  # the configured URL, nowhere else
            # Uncompressed: the size cap then counts what is parsed (no decompression bomb).
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
        )
        await self._fetch_shared()
        self._background = asyncio.create_task(self._refresh_forever(), name="jwks-refresh")

    async def close(self) -> None:
        for task in (self._background, self._fetching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None:
            await self._client.aclose()

    async def refresh_for_unknown_kid(self) -> bool:
        """Wait for a fetch, if one may happen now; True if the key set was refreshed.

        A fetch already running is joined. Otherwise one starts only if none started in the
        last `UNKNOWN_KID_INTERVAL_SECONDS`; a request beyond that gate returns at once.
        """
        if self._fetching is None:
            now = time.monotonic()
            if now - self._last_kid_fetch < UNKNOWN_KID_INTERVAL_SECONDS:
                return False
            self._last_kid_fetch = now
        return await self._fetch_shared()

    async def _fetch_shared(self) -> bool:
        """Run one fetch, or join the one running. The fetch is a task of its own, shielded,
        so a request that gives up (its client went away) does not cancel it for the others."""
        if self._fetching is None:
            self._fetching = asyncio.create_task(self._fetch(), name="jwks-fetch")
            self._fetching.add_done_callback(self._fetch_done)
        return await asyncio.shield(self._fetching)

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._fetching is task:
            self._fetching = None

    async def _refresh_forever(self) -> None:
        while True:
            if self._failures:
                first, last = RETRY_SECONDS
                delay = min(last, first * 2 ** (self._failures - 1))
            else:
                delay = self._refresh_seconds
            await asyncio.sleep(delay)
            await self._fetch_shared()

    async def _fetch(self) -> bool:
        """Fetch and replace the key set; on any failure keep the last good one."""
        try:
            # Each read has its timeout; this bounds a server that trickles bytes.
            async with asyncio.timeout(2 * self._timeout):
                jwks_url = self._jwks_url or await self._discover()
                document, max_age = await self._get_json(jwks_url, "jwks.fetch")
                keys = usable_keys(document, self._algorithm)
        except Exception as error:  # whatever went wrong, the last good keys stay
            self._failed(describe_error(error))
            return False
        if self._failures or set(keys) != set(self._keys):
            logger.info("JWKS: %d key(s) from %s", len(keys), safe_url(jwks_url))
        self._jwks_url = jwks_url  # discovery done, or nothing to remember
        self._keys = keys  # a new dict: requests already holding the old one finish with it
        self._refresh_seconds = clamp(max_age, *REFRESH_BOUNDS)
        self._failures = 0
        return True

    def _failed(self, reason: str) -> None:
        self._failures += 1
        if self._failures > 1:
            return  # said once per outage; the state is visible at /health/ready
        source = safe_url(self._jwks_url or f"{self._oidc_issuer} (discovery)")
        if self._keys:
            logger.warning(
                "JWKS: fetch from %s failed (%s); keeping the last good keys", source, reason
            )
        else:
            logger.error("JWKS: no keys from %s (%s); not ready, retrying", source, reason)

    async def _discover(self) -> str:
        """The JWKS URL from the issuer's metadata: its OpenID Provider configuration (OIDC
        Discovery 1.0), or, where it has none, its OAuth 2.0 authorization server metadata
        (RFC 8414), at the URLs `metadata_urls` gives."""
        issuer = self._oidc_issuer
        if issuer is None:
            raise FetchError("no JWKS URL configured")
        oidc, oauth = metadata_urls(issuer)
        try:
            document, _ = await self._get_json(oidc, "oidc.discovery")
        except FetchError:  # no OpenID configuration (a 404, say): an OAuth server's metadata
            document, _ = await self._get_json(oauth, "oidc.discovery")
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            # Both specifications: the document must name the issuer it was asked for (OIDC
            # Discovery 1.0, section 4.3; RFC 8414, section 3.3).
            raise FetchError("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise FetchError("the discovery document has no usable jwks_uri")
        return jwks_uri

    async def _get_json(self, url: str, span_name: str) -> tuple[Any, float]:
        """The JSON document at `url` and its max-age; at most `MAX_DOCUMENT_BYTES` are read.
        With tracing on, the request carries this fetch's `traceparent`."""
        client = self._client
        if client is None:
            raise FetchError("not started")
        async with self._tracing.client_span(span_name, FETCH_ATTRIBUTES) as span:
            headers: dict[str, str] = {}
            self._tracing.inject(headers)
            return await read_json(client, url, headers, span)


async def read_json(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], span: Span
) -> tuple[Any, float]:
    """`_get_json`'s request: the document and its max-age, the status on `span`."""
    async with client.stream("GET", url, headers=headers) as response:
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code != 200:
            raise FetchError(f"HTTP {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise FetchError(f"the answer is over {MAX_DOCUMENT_BYTES} bytes")
        max_age = max_age_of(response.headers.get("cache-control", ""))
    try:
        return json.loads(body), max_age
    except NOT_JSON_ERRORS:
        raise FetchError("the answer is not JSON") from None


def metadata_urls(issuer: str) -> tuple[str, str]:
    """Where an issuer's metadata is: OIDC Discovery appends its well-known path to the issuer
    (`https://id.example/tenant/.well-known/openid-configuration`); RFC 8414, section 3.1,
    inserts it between host and path (`https://id.example/.well-known/oauth-authorization-server
    /tenant`), which for an issuer without a path is the same place."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    oidc = f"{origin}{path}/.well-known/openid-configuration"
    oauth = f"{origin}/.well-known/oauth-authorization-server{path}"
    return oidc, oauth


def usable_keys(document: Any, algorithm: str) -> dict[str, Key]:
    """The keys of a JWK Set that can verify `algorithm` signatures, by `kid` (at most
    `MAX_KEYS`). Keys for encryption, for another algorithm, of another type or curve, too
    weak, without a `kid` or carrying private members are left out; none left is an error."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FetchError("not a JWK Set")
    keys: dict[str, Key] = {}
    for entry in entries:
        key = usable_key(entry, algorithm)
        if key is not None and entry["kid"] not in keys:
            keys[entry["kid"]] = key
            if len(keys) == MAX_KEYS:
                break
    if not keys:
        raise FetchError(f"no {algorithm} signing key in the JWK Set")
    return keys


def usable_key(entry: Any, algorithm: str) -> Key | None:
    if not isinstance(entry, dict):
        return None
    kid = entry.get("kid")
    if not (isinstance(kid, str) and KID_PATTERN.fullmatch(kid)):  # a kid tokens can name
        return None
    if entry.get("use", "sig") != "sig" or entry.get("alg", algorithm) != algorithm:
        return None
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if PRIVATE_MEMBERS & entry.keys():
        return None
    if not fits(entry, algorithm):
        return None
    try:
        return jwk.construct(entry, algorithm)
    except TOKEN_ERRORS:
        return None


def fits(entry: dict[str, Any], algorithm: str) -> bool:
    """The key's type (and curve or size) is the one `algorithm` needs."""
    if algorithm == "ES256":
        return entry.get("kty") == "EC" and entry.get("crv") == "P-256"
    if algorithm == "RS256" and entry.get("kty") == "RSA":
        modulus = entry.get("n")
        if not isinstance(modulus, str) or len(modulus) > RSA_BITS[1]:
            return False
        try:
            bits = int.from_bytes(base64.urlsafe_b64decode(modulus + "==")).bit_length()
        except ValueError:
            return False
        return RSA_BITS[0] <= bits <= RSA_BITS[1]
    return False


def max_age_of(cache_control: str) -> float:
    match = MAX_AGE_PATTERN.search(cache_control)
    return float(match[1]) if match else DEFAULT_REFRESH_SECONDS


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def safe_url(url: str) -> str:
    """A URL for the log: no user info, no query string (either may hold a credential)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def describe_error(error: Exception) -> str:
    if isinstance(error, FetchError):
        return str(error)
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return "timed out"
    if isinstance(error, httpx.ConnectError):
        return "cannot connect"
    return type(error).__name__
