"""The outermost ASGI guard of the served app: Host allow-list, Origin checks, CORS, methods, body limits.

A server on localhost is reachable from every web page the user opens, so (as Jupyter, ComfyUI and
Ollama do for the same hole):

* **Host allow-list** (DNS rebinding): a page on ``attacker.example`` whose name is made to resolve
  to 127.0.0.1 reaches us with ``Host: attacker.example``; only the names this server is known by are
  answered (``HostPolicy``), anything else is a 403 on every route (API, web UI, docs).
* **Origin check** on every request that can change something (any method but GET/HEAD/OPTIONS, and
  websockets): a browser sends ``Origin`` with each of them, even for ``fetch(..., {mode: "no-cors"})``
  and plain forms, so a request whose ``Origin`` is not this server itself (scheme-less ``host:port``
  compared, as ComfyUI does) nor one of ``--cors-allow-origins`` is a 403 before it reaches a route.
  Without ``Origin`` a ``Sec-Fetch-Site`` other than ``same-origin``/``none`` is refused too; clients
  that send neither (curl, scripts) are not browsers and pass.
* **CORS**: no route answers with ``Access-Control-Allow-*`` headers of its own (Gradio reflects any
  Origin); only the ``--cors-allow-origins`` origins get them, and a preflight from any other origin
  is a 403 without them.  Pages on another port of localhost are other origins.
* **Methods**: anything but GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS (TRACE, CONNECT, ...) is a 405.
* **Bodies** outside the API (the web UI's uploads and queue calls) are read here up to
  ``--max-body-mb`` (413 above), uploads carry at most ``--max-upload-files`` files (413), and
  failed web UI log-ins are slowed per client address (``AuthThrottle``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modules.frontends.auth_throttle import AuthThrottle

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
API_PREFIX = "/sdapi/"
UPLOAD_SUFFIX = "/upload"
LOGIN_SUFFIXES = ("/login",)


def split_list(spec: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [part.strip() for part in (spec or "").split(",") if part.strip()]


def host_name(header: str) -> str:
    """The name part of a Host header, lower-case: 'Example.COM.:80' -> 'example.com', '[::1]:7860' -> '::1'."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class HostPolicy:
    """The Host names the server answers to.

    Always: localhost names (and ``*.localhost``, which resolves to loopback by RFC 6761), loopback
    addresses, the bind address and ``--allowed-hosts``.  Listening on every interface (``--listen``
    or ``--server-name 0.0.0.0``) adds any IP address (a page reached by its IP address is that address'
    own origin: no rebinding there) and this machine's host names.  ``--allowed-hosts '*'``: any.
    """

    names: frozenset[str]
    any_ip: bool = False
    any_host: bool = False

    def allows(self, header: str | None) -> bool:
        if self.any_host or not header:  # no Host at all: HTTP/1.0 or a test client, not a browser
            return True
        name = host_name(header)
        if name in self.names or name in LOCAL_NAMES or name.endswith(".localhost"):
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or self.any_ip or str(ip) in self.names)

    @classmethod
    def build(cls, *, server_name: str | None, listen: bool, allowed_hosts: str | None) -> HostPolicy:
        extra = [h.lower() for h in split_list(allowed_hosts)]
        names = {host_name(h) for h in extra if h != "*"}
        bind = (server_name or ("0.0.0.0" if listen else "127.0.0.1")).lower()
        names.add(host_name(bind))
        everywhere = bind in ("0.0.0.0", "::", "[::]", "")
        if everywhere:
            names |= _machine_names()
        return cls(frozenset(names), any_ip=everywhere, any_host="*" in extra)


def _machine_names() -> set[str]:
    """This machine's host names (what a LAN user types instead of its address)."""
    names = {socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return {n.rstrip(".") for n in names if n}


@dataclass(frozen=True)
class OriginPolicy:
    """Which browser origins may change state and read responses: the server's own, plus ``allowed``."""

    allowed: frozenset[str]

    @classmethod
    def build(cls, cors_allow_origins: str | None) -> OriginPolicy:
        return cls(frozenset(o.rstrip("/").lower() for o in split_list(cors_allow_origins)))

    def listed(self, origin: str | None) -> bool:
        return origin is not None and origin.rstrip("/").lower() in self.allowed

    def foreign(self, headers: Headers) -> str | None:
        """Why this request comes from another site's page (None when it does not)."""
        origin = headers.get("origin")
        if origin is not None:
            if self.listed(origin):
                return None
            if origin.strip().lower() == "null":
                return "Origin: null (a sandboxed or file:// page)"
            if urlsplit(origin.strip()).netloc.lower() != headers.get("host", "").strip().lower():
                return f"Origin {origin[:200]!r} is not this server"
            return None
        site = headers.get("sec-fetch-site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            return f"Sec-Fetch-Site: {site[:40]}"
        return None


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int
    max_upload_files: int


class HttpGuard:
    """The checks of the module docstring, in front of everything the app serves."""

    def __init__(self, app: ASGIApp, *, hosts: HostPolicy, origins: OriginPolicy, limits: BodyLimits,
                 throttle: AuthThrottle | None = None,
                 on_upload: Callable[[], None] | None = None):  # fmt: skip
        self.app = app
        self.hosts = hosts
        self.origins = origins
        self.limits = limits
        self.throttle = throttle or AuthThrottle()
        self.on_upload = on_upload  # e.g. sweep old uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope.get("method", "GET").upper()
        refusal = self._refusal(scope, headers, method)
        if refusal is not None:
            await send_error(send, *refusal)
            return
        if method == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(headers, send)
            return
        send = self._cors_send(headers, send)
        path = scope.get("path", "")
        if method not in SAFE_METHODS and not path.startswith(API_PREFIX):
            await self._guarded_body(scope, receive, send, headers, path)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers, method: str) -> tuple[int, str, str, dict] | None:
        """(status, detail, error, headers) for a request refused before it reaches the app."""
        if method not in KNOWN_METHODS:
            return 405, f"method {method[:20]} is not allowed", "MethodNotAllowed", {"Allow": ", ".join(KNOWN_METHODS)}
        host = headers.get("host")
        if not self.hosts.allows(host):
            log.warning("refused a request for host %r from %s (not an allowed host)", (host or "")[:200],
                        client_address(scope))  # fmt: skip
            return 403, f"host {host_name(host or '')[:200]!r} is not allowed (--allowed-hosts)", "HostNotAllowed", {}
        if method not in SAFE_METHODS:
            reason = self.origins.foreign(headers)
            if reason is not None:
                log.warning("refused %s %s from another site's page (%s)", method, scope.get("path", ""), reason)
                return 403, f"cross-site request refused: {reason} (--cors-allow-origins)", "CrossSiteRequest", {}
        return None

    async def _preflight(self, headers: Headers, send: Send) -> None:
        origin = headers.get("origin")
        if not self.origins.listed(origin):
            await send_error(send, 403, "cross-origin requests are not allowed from this page (--cors-allow-origins)",
                             "CrossSiteRequest", {})  # fmt: skip
            return
        allow = {
            "Access-Control-Allow-Origin": origin or "",
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": ", ".join(KNOWN_METHODS),
            "Access-Control-Allow-Headers": headers.get("access-control-request-headers", "")[:1000],
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }
        await send({"type": "http.response.start", "status": 200, "headers": _raw(allow | {"Content-Length": "0"})})
        await send({"type": "http.response.body", "body": b""})

    def _cors_send(self, headers: Headers, send: Send) -> Send:
        """Drop every CORS header the app set; add ours for a listed origin."""
        origin = headers.get("origin")
        listed = self.origins.listed(origin)

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
                message = dict(message, headers=raw)
                if listed:
                    out = MutableHeaders(scope=message)
                    out["Access-Control-Allow-Origin"] = origin or ""
                    out["Access-Control-Allow-Credentials"] = "true"
                    out.append("Vary", "Origin")
            await send(message)

        return cors_send

    async def _guarded_body(self, scope: Scope, receive: Receive, send: Send, headers: Headers, path: str) -> None:
        """A web UI request that sends a body: size and file count checked, log-ins throttled."""
        client = client_address(scope)
        login = path.endswith(LOGIN_SUFFIXES)
        if login and (wait := self.throttle.wait_seconds(client)) > 0:
            await send_error(send, 429, f"too many failed log-ins; try again in {math.ceil(wait)} s",
                             "TooManyRequests", {"Retry-After": str(math.ceil(wait))})  # fmt: skip
            return
        body = await read_body(receive, send, headers, self.limits.max_body_bytes)
        if body is None:
            return
        if path.endswith(UPLOAD_SUFFIX):
            files = count_parts(headers.get("content-type", ""), body)
            if files > self.limits.max_upload_files:
                await send_error(send, 413, f"{files} files in one upload; at most {self.limits.max_upload_files} "
                                 "(--max-upload-files)", "TooManyFiles", {})  # fmt: skip
                return
            if self.on_upload is not None:
                self.on_upload()
        if login:
            send = self._login_outcome(client, send)
        await self.app(scope, replay(body, receive), send)

    def _login_outcome(self, client: str, send: Send) -> Send:
        async def outcome(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message.get("status", 500) < 300:
                    self.throttle.succeeded(client)
                elif message.get("status") in (400, 401, 403):
                    self.throttle.failed(client, "web UI log-in")
            await send(message)

        return outcome

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if not self.hosts.allows(headers.get("host")) or self.origins.foreign(headers) is not None:
            log.warning("refused a websocket from %s (host or origin not allowed)", client_address(scope))
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def count_parts(content_type: str, body: bytes) -> int:
    """How many parts a multipart/form-data body has (0 for other bodies)."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return 0
    boundary = ""
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return 0
    return max(0, body.count(b"--" + boundary.encode("latin-1", "replace")) - 1)


async def read_body(receive: Receive, send: Send, headers: Headers, limit: int) -> bytes | None:
    """The whole request body, or None after answering 413 (too large) / when the client went away."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        await too_large(send, limit, int(length))
        return None
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            await too_large(send, limit, None)
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the buffered body to the app once, then passes on (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def too_large(send: Send, limit: int, length: int | None) -> None:
    size = f"{length / 2**20:.1f} MiB" if length is not None else "more than that"
    await send_error(send, 413, f"request body too large: {size}; the limit is {limit / 2**20:g} MiB (--max-body-mb)",
                     "RequestTooLarge", {"Connection": "close"})  # fmt: skip


async def send_error(send: Send, status: int, detail: str, error: str, headers: dict[str, str]) -> None:
    """The documented error shape, {"detail": ..., "error": ...}, as JSON."""
    body = json.dumps({"detail": detail, "error": error}).encode()
    raw = _raw({"Content-Type": "application/json", "Content-Length": str(len(body)), **headers})
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers.items()]
