"""Listening sockets that a hostile or careless client cannot exhaust.

Every port livechain opens (the API, the metrics/probe port, a replica's) goes through here:

* ``bind_socket`` binds early and names the setting when it cannot (port in use, a host that
  does not resolve or is not this machine's), so ``http.port`` in use fails before warm-up,
  with exit 2, while nothing listens until the caller starts a ``GuardedSite`` on the socket;
* ``ConnectionGuard`` caps the connections open at once (beyond the cap a new connection gets a
  ``503`` JSON error and is closed) and closes a connection that has not sent a whole request
  head within ``idle_timeout_s`` of opening (silent sockets, trickled headers);
* ``connection_budget`` lowers a cap so that the process keeps a reserve of file descriptors
  under its ``RLIMIT_NOFILE``: a client flood never leaves the feed unable to reconnect;
* ``throttle_loop_errors`` rate-limits asyncio's per-event error logs (``socket.accept() out
  of system resource`` repeats once per refused accept otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from http import HTTPStatus
from typing import Any

import orjson

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from feeds.throttle import LogThrottle
from service.errors import ConfigError

log = logging.getLogger(__name__)

# Descriptors kept free for everything that is not a client connection: the feed's sockets
# (≤ 5) and their reconnects, Redis, the scrip master, log files, DNS.
FD_RESERVE = 64
REFUSED_BODY = b'{"error":{"code":"too_many_connections","message":"too many open connections; retry shortly"}}'
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(REFUSED_BODY)).encode() + b"\r\n\r\n" + REFUSED_BODY
)


def _env(key: str) -> str:
    return "LIVECHAIN_" + key.upper().replace(".", "__")


def bind_socket(host: str, port: int, *, host_key: str, port_key: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet); a ConfigError names the setting."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(
            f"{host_key} = {host!r} does not resolve ({_env(host_key)}): use an address of this machine, "
            "e.g. 127.0.0.1 (local only) or 0.0.0.0 (every interface)"
        ) from None
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{port_key} = {port} is already in use on {host} ({_env(port_key)}): stop the other process "
                "or choose another port"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                f"{host_key} = {host!r} is not an address of this machine ({_env(host_key)}): use one of its "
                "addresses, 127.0.0.1 or 0.0.0.0"
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"{port_key} = {port} needs privileges on {host} ({_env(port_key)}): use a port above 1023"
            ) from None
        raise ConfigError(f"cannot bind {host}:{port} ({host_key}, {port_key}): {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def open_descriptors() -> int | None:
    """Descriptors this process has open now (Linux), else None."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def connection_budget(requested: int, *, others: int = 0, reserve: int = FD_RESERVE, what: str = "") -> int:
    """``requested`` lowered so that ``others`` more connections elsewhere and ``reserve`` free
    descriptors still fit under the soft RLIMIT_NOFILE (one WARNING line when lowered)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return requested
    if soft == resource.RLIM_INFINITY:
        return requested
    in_use = open_descriptors() or 32
    needed = in_use + reserve + others + requested
    if needed > soft and (hard == resource.RLIM_INFINITY or hard > soft):
        # Raise the soft limit as far as the hard one allows (what an operator's ulimit -n would do).
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    budget = max(1, soft - in_use - reserve - others)
    if budget < requested:
        log.warning(
            "%s: at most %d connections at once (setting: %d), keeping %d of the %d descriptors this process may open "
            "for the feed and Redis; raise the limit (ulimit -n) to allow more",
            what or "connections", budget, requested, reserve, soft,
        )  # fmt: skip
        return budget
    return requested


class _Refused(asyncio.Protocol):
    """Over the cap: answer 503 with the JSON error body and close."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSED)
        transport.close()  # the write is flushed first
        self._guard.refused += 1


_ERROR_CODES = {400: "bad_request", 413: "request_too_large", 414: "uri_too_long", 431: "headers_too_large"}
_bad_request_log = LogThrottle(log, interval_s=60.0)


class JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering what it rejects before routing (a malformed or
    oversized request line, bad headers, a non-ASCII target) with our JSON error body instead
    of ``text/plain`` that echoes the request; one rate-limited WARNING instead of a traceback
    per bad request."""

    __slots__ = ()

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)  # our bug: keep the traceback
        else:
            _bad_request_log("HTTP %d before routing (%s) from a client", status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already sent, cannot send the error")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        code = _ERROR_CODES.get(status, "internal_error" if status >= 500 else "http_error")
        # The message never quotes the request: it may carry a key or be crafted for a log.
        body = orjson.dumps({"error": {"code": code, "message": phrase.lower()}})
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class ConnectionGuard:
    """The protocol factory of a guarded port: caps open connections, enforces the header timeout."""

    def __init__(self, server: web.Server, *, max_connections: int, idle_timeout_s: float, name: str) -> None:
        self.server = server
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.name = name
        self.accepted = 0
        self.refused = 0
        self.header_timeouts = 0
        self._pending = 0  # created, not yet known to the server (connection_made is queued)
        self._log_refused = LogThrottle(log, interval_s=60.0)

    @property
    def open(self) -> int:
        return len(self.server.connections) + self._pending

    def __call__(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        if self.open >= self.max_connections:
            self._log_refused("%s: %d connections open, the most allowed: refusing more", self.name, self.open)
            return _Refused(self)
        server = self.server
        handler = JsonErrorHandler(server, loop=loop, **getattr(server, "_kwargs", {}))
        self.accepted += 1
        self._pending += 1
        # connection_made is queued right after this factory returns: settle after it ran.
        loop.call_soon(loop.call_soon, self._settle)
        loop.call_later(self.idle_timeout_s, self._header_deadline, handler)
        return handler

    def _settle(self) -> None:
        self._pending -= 1

    def _header_deadline(self, handler: RequestHandler) -> None:
        # No whole request head yet: a silent socket or trickled headers (aiohttp's keep-alive
        # timeout bounds the time between later requests).
        if handler.transport is not None and getattr(handler, "_request_count", 1) == 0:
            self.header_timeouts += 1
            handler.force_close()


class GuardedSite(web.BaseSite):
    """Serve a runner on an already bound socket through a ``ConnectionGuard``."""

    __slots__ = ("_sock", "_guard_args", "guard")

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, *, max_connections: int, idle_timeout_s: float,
        name: str, backlog: int = 128,
    ) -> None:  # fmt: skip
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._guard_args = dict(max_connections=max_connections, idle_timeout_s=idle_timeout_s, name=name)
        self.guard: ConnectionGuard | None = None

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.guard = ConnectionGuard(server, **self._guard_args)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        throttle_loop_errors(loop)
        self._server = await loop.create_server(self.guard, sock=self._sock, backlog=self._backlog)


# The guards of the ports an app is served on (connection counts for tests and metrics).
GUARDS = web.AppKey("connection_guards", list[ConnectionGuard])

_THROTTLED = "socket.accept() out of system resource"


def throttle_loop_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Rate-limit asyncio's per-event accept errors (EMFILE floods): one line a minute, counted."""
    previous = loop.get_exception_handler()
    if getattr(previous, "livechain_throttled", False):
        return
    throttle = LogThrottle(log, interval_s=60.0, level=logging.ERROR)

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith(_THROTTLED):
            exc = context.get("exception")
            throttle("%s: %s", message, getattr(exc, "strerror", None) or exc)
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    handler.livechain_throttled = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


@contextlib.asynccontextmanager
async def guarded_server(
    app: web.Application, sock: socket.socket, *, max_connections: int, idle_timeout_s: float,
    keepalive_timeout_s: float, name: str, shutdown_timeout_s: float = 3.0,
) -> Any:  # fmt: skip
    """Serve ``app`` on ``sock`` (bound by ``bind_socket``); yields the ``GuardedSite``."""
    guards = app.setdefault(GUARDS, [])  # before the runner freezes the app
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=keepalive_timeout_s,
    )  # fmt: skip
    await runner.setup()
    try:
        site = GuardedSite(runner, sock, max_connections=max_connections, idle_timeout_s=idle_timeout_s, name=name)
        await site.start()
        assert site.guard is not None
        guards.append(site.guard)
        yield site
    finally:
        await runner.cleanup()
        sock.close()
