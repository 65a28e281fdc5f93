"""Prometheus metrics: our own registry, computed at scrape time, served on their own port.

Nothing on the tick path calls ``prometheus_client``. The feed client, ``Ingest`` and the
cache keep plain counters (``+= 1`` costs ~30 ns, ``Counter.inc()`` ~340 ns and a
``.labels()`` lookup over 1 µs); ``LivechainCollector.collect`` reads them when Prometheus
scrapes and turns them into metric families. The per-batch receive-to-applied latency and the
per-request HTTP figures go into ``Histogram``, a bisect and two additions.

Parts appear during startup (cache, feed, ingest, a Redis mirror): the collector exports what
exists, so a scrape during warm-up shows the phase, the coverage so far and the feed's
traffic. The server is bound before anything else starts for the same reason.

Every name starts with ``livechain_`` and carries its unit; the list is in README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from feeds.clock import SYSTEM_CLOCK, Clock
from service.listen import GUARDS, ConnectionGuard, bind_socket, guarded_server
from service.core.health import Health
from service.core.lifecycle import Phase

if TYPE_CHECKING:
    from service.core.ingest import Ingest
    from service.tasks import Supervisor

log = logging.getLogger(__name__)

PREFIX = "livechain_"

# Receive-to-applied is tens of µs when idle and grows with a backlog: log-spaced up to 2.5 s.
INGEST_LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
HTTP_LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Histogram:
    """A Prometheus histogram kept as plain numbers: ``observe`` is one bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "≤").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs ending with +Inf, as ``HistogramMetricFamily`` wants."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append((floatToGoString(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class HttpMetrics:
    """Requests by route and status, and latency by route (``counted``: a layer of every API route)."""

    def __init__(self) -> None:
        # Per route: its requests by status, and its latency. A route's pair is found once, when
        # the route is registered (``recorder``), not per request.
        self._routes: dict[str, tuple[dict[int, int], Histogram]] = {}

    def _route(self, route: str) -> tuple[dict[int, int], Histogram]:
        slot = self._routes.get(route)
        if slot is None:
            slot = self._routes[route] = ({}, Histogram(HTTP_LATENCY_BUCKETS_S))
        return slot

    def record(self, route: str, status: int, seconds: float) -> None:
        counts, latency = self._route(route)
        counts[status] = counts.get(status, 0) + 1
        latency.observe(seconds)

    def recorder(self, route: str) -> Callable[[int, float], None]:
        """``record`` for one route (status, seconds), its pair looked up now rather than per request."""
        counts, latency = self._route(route)
        observe = latency.observe

        def record(status: int, seconds: float) -> None:
            counts[status] = counts.get(status, 0) + 1
            observe(seconds)

        return record

    @property
    def requests(self) -> dict[tuple[str, int], int]:
        """Requests by (route, status), as counted so far (routes registered but not requested yet absent)."""
        return {(route, status): n for route, (counts, _) in self._routes.items() for status, n in counts.items()}

    @property
    def latency(self) -> dict[str, Histogram]:
        """Latency by route, for the routes requested so far."""
        return {route: hist for route, (counts, hist) in self._routes.items() if counts}

    def not_modified_ratio(self, route: str = "/options/live") -> float | None:
        """Share of conditional hits among the route's successful answers (304 / (200 + 304))."""
        counts = self._routes[route][0] if route in self._routes else {}
        ok, hits = counts.get(200, 0), counts.get(304, 0)
        return hits / (ok + hits) if ok + hits else None

    def counted(self, handler: Handler, route: str | None) -> Handler:
        """``handler``, its requests counted under ``route`` (the route's pattern; None: the
        catch-all's, whose label ``path_route`` finds per request). The outermost layer of every
        API route (``service.http.Routes``): it must see final statuses, incl. 499 when the client
        goes away and 500 when an exception escapes. ``service.http.live_handler`` does the same inline."""
        perf_counter = time.perf_counter
        recorder = self.recorder
        fixed = recorder(route) if route is not None else None

        async def counted(request: web.Request) -> web.StreamResponse:
            start = perf_counter()
            record = fixed if fixed is not None else recorder(await path_route(request))
            status = 500  # an exception that escapes every handler becomes aiohttp's 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:
                status = 499  # nginx's "client closed request": no response was sent
                raise
            finally:
                record(status, perf_counter() - start)

        return counted


async def path_route(request: web.Request) -> str:
    """The pattern of the route whose path matched when its method did not (a 405, a CORS
    preflight), else ``unmatched``: still never the raw path (the counting's label for requests
    no route took; the resource that did take it, a catch-all, is skipped)."""
    for resource in request.app.router.resources():
        match, allowed = await resource.resolve(request)
        if match is None and allowed:
            return resource.canonical
    return "unmatched"


class LivechainCollector(Collector):
    """Reads the service's plain counters and state at scrape time."""

    def __init__(self, health: Health, http: HttpMetrics, ingest_latency: Histogram, clock: Clock) -> None:
        self.health = health
        self.http = http
        self.ingest_latency = ingest_latency
        self.ingest: Ingest | None = None
        self.analytics: object | None = None  # service.analytics.runner.AnalyticsRunner
        self.seeder: object | None = None  # service.analytics.rest_seed.RestSeeder
        self.history: object | None = None  # service.history.store.HistoryStore
        self.tasks: Supervisor | None = None
        # (port label, that app's GUARDS list): read at scrape time, so accepting only increments.
        self.connection_guards: list[tuple[str, list[ConnectionGuard]]] = []
        self.streams: web.Application | None = None  # the app serving /options/stream (service.stream)
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock.time()
        yield from self._health()
        feed = self.health.feed
        if feed is not None:
            yield from self._feed(feed, now)
        if self.ingest is not None:
            yield from self._ingest(self.ingest)
        if self.health.cache is not None:
            yield from self._cache(now)
        yield from self._http()
        if self.health.mirror is not None:
            yield from self._mirror(self.health.mirror)
        if self.analytics is not None:
            yield from self._analytics(self.analytics)
        if self.seeder is not None:
            yield from self._rest(self.seeder)
        if self.history is not None:
            yield from self._history(self.history)
        if self.tasks is not None:
            yield from self._tasks(self.tasks)
        if self.connection_guards:
            yield from self._connections()
        if self.streams is not None:
            yield from self._streams(self.streams)

    def _tasks(self, supervisor: Supervisor) -> Iterator[Metric]:
        crashes = CounterMetricFamily(
            PREFIX + "task_crashes_total", "Background task crashes (errors, or returns while not asked to stop)",
            labels=["task"],
        )
        restarts = CounterMetricFamily(PREFIX + "task_restarts_total", "Background tasks restarted after a crash",
                                       labels=["task"])  # fmt: skip
        for name, n in supervisor.crashes.items():
            crashes.add_metric([name], n)
        for name, n in supervisor.restarts.items():
            restarts.add_metric([name], n)
        yield crashes
        yield restarts

    def _history(self, store: object) -> Iterator[Metric]:
        stats = store.stats  # type: ignore[attr-defined]
        yield CounterMetricFamily(PREFIX + "history_samples_total", "Chain samples taken (service.history)",
                                  value=stats.samples)  # fmt: skip
        yield CounterMetricFamily(PREFIX + "history_passes_total", "History sample passes", value=stats.passes)
        yield CounterMetricFamily(PREFIX + "history_seconds_total", "Time spent in history sample passes",
                                  value=stats.seconds_total)  # fmt: skip
        yield CounterMetricFamily(PREFIX + "history_parquet_writes_total", "Days (per underlying) written to Parquet",
                                  value=stats.parquet_writes)  # fmt: skip
        yield CounterMetricFamily(PREFIX + "history_parquet_errors_total",
                                  "Failed Parquet writes (the day is kept in memory and retried)",
                                  value=stats.parquet_errors)  # fmt: skip
        yield GaugeMetricFamily(PREFIX + "history_bytes", "Bytes of samples held in memory",
                                value=store.nbytes)  # type: ignore[attr-defined]  # fmt: skip

    def _analytics(self, runner: object) -> Iterator[Metric]:
        stats = runner.stats  # type: ignore[attr-defined]
        yield CounterMetricFamily(PREFIX + "analytics_passes_total", "Chain analytics computed", value=stats.passes)
        yield CounterMetricFamily(
            PREFIX + "analytics_seconds_total", "Time spent computing chain analytics", value=stats.seconds_total
        )
        yield CounterMetricFamily(PREFIX + "analytics_errors_total", "Chain analytics that failed", value=stats.errors)
        last = GaugeMetricFamily(
            PREFIX + "analytics_last_seconds", "Cost of the last analytics pass of a chain", labels=["underlying", "expiry"]
        )
        for (underlying, expiry), seconds in stats.last_seconds.items():
            last.add_metric([underlying, expiry], seconds)
        yield last

    def _rest(self, seeder: object) -> Iterator[Metric]:
        client = seeder.client.stats  # type: ignore[attr-defined]
        seeded = seeder.stats  # type: ignore[attr-defined]
        for name, value, doc in (
            ("rest_requests_total", client.requests, "Option-chain REST requests sent (attempts)"),
            ("rest_retries_total", client.retries, "Option-chain REST requests retried"),
            ("rest_rate_limited_total", client.rate_limited, "Option-chain REST answers saying too many requests"),
            ("rest_failures_total", client.failures, "Option-chain REST calls given up"),
            ("rest_chains_seeded_total", seeded.chains_seeded, "Chains seeded or reconciled from the REST option chain"),
        ):
            yield CounterMetricFamily(PREFIX + name, doc, value=value)

    def _health(self) -> Iterator[Metric]:
        report = self.health.report()
        phase = GaugeMetricFamily(
            PREFIX + "lifecycle_phase", "1 for the lifecycle phase the process is in, 0 for the others",
            labels=["phase"],
        )
        for p in Phase:
            phase.add_metric([p.value], 1.0 if p is report.phase else 0.0)
        yield phase
        yield GaugeMetricFamily(
            PREFIX + "ready", "1 when the readiness gate passed and not stopping", value=float(report.ready)
        )
        yield GaugeMetricFamily(
            PREFIX + "degraded", "1 when serving with problems (see /readyz for the reasons)",
            value=float(report.status == "degraded"),
        )
        checks = GaugeMetricFamily(PREFIX + "health_check_ok", "1 when a health check passes", labels=["check"])
        for name, ok in report.checks.items():
            checks.add_metric([name], float(ok))
        yield checks
        if report.market_open is not None:  # alerts about silence apply only while it is 1
            yield GaugeMetricFamily(
                PREFIX + "market_open", "1 while the market calendar has a session in progress",
                value=float(report.market_open),
            )

    def _feed(self, feed: object, now: float) -> Iterator[Metric]:
        connections = list(getattr(feed, "connections", ()))
        # The client counts packets by class; the feed names its classes (feeds.source.FeedSource).
        names = getattr(feed, "packet_names", {})
        broker = getattr(feed, "broker", None)
        if broker is not None:
            info = GaugeMetricFamily(PREFIX + "feed_info", "The broker whose feed this is (value 1)", labels=["broker"])
            info.add_metric([broker], 1.0)
            yield info
        packets = CounterMetricFamily(
            PREFIX + "feed_packets_total", "Packets received, by the broker's packet type", labels=["connection", "type"]
        )
        heartbeats = CounterMetricFamily(
            PREFIX + "feed_heartbeats_total", "Heartbeat frames received (Kite's 1-byte frames)", labels=["connection"]
        )
        server_errors = CounterMetricFamily(
            PREFIX + "feed_server_errors_total", "Error messages sent by the broker (Kite's text error frames)",
            labels=["connection"],
        )
        frames = CounterMetricFamily(PREFIX + "feed_frames_total", "WebSocket frames received", labels=["connection"])
        received = CounterMetricFamily(
            PREFIX + "feed_received_bytes_total", "Bytes of binary frames received", labels=["connection"]
        )
        errors = CounterMetricFamily(
            PREFIX + "feed_decode_errors_total", "Malformed packets skipped", labels=["connection"]
        )
        up = GaugeMetricFamily(PREFIX + "feed_connection_up", "1 while the connection is open", labels=["connection"])
        connects = CounterMetricFamily(
            PREFIX + "feed_connects_total", "Sessions opened and subscribed (first connect and reconnects)",
            labels=["connection"],
        )
        ends = CounterMetricFamily(
            PREFIX + "feed_reconnects_total", "Sessions that ended, each followed by a reconnect, by reason",
            labels=["connection", "reason"],
        )
        codes = CounterMetricFamily(
            PREFIX + "feed_server_disconnects_total", "Disconnect packets (code 50) received, by Dhan reason code",
            labels=["connection", "code"],
        )
        age = GaugeMetricFamily(
            PREFIX + "feed_last_frame_age_seconds", "Seconds since the connection last received a frame",
            labels=["connection"],
        )
        subscribed = GaugeMetricFamily(
            PREFIX + "feed_instruments_subscribed", "Instruments subscribed on the connection", labels=["connection"]
        )
        for conn in connections:
            c = str(conn.index)
            s = conn.stats
            for cls, n in s.packets_by_type.items():
                packets.add_metric([c, names.get(cls, "unknown")], n)
            heartbeats.add_metric([c], s.heartbeats)
            server_errors.add_metric([c], s.server_errors)
            frames.add_metric([c], s.frames)
            received.add_metric([c], s.bytes)
            errors.add_metric([c], s.decode_errors)
            up.add_metric([c], float(s.connected))
            connects.add_metric([c], s.connects)
            for reason, n in s.disconnects_by_reason.items():
                ends.add_metric([c, reason], n)
            for code, n in s.server_disconnect_codes.items():
                codes.add_metric([c, str(code)], n)
            if s.last_frame_at is not None:
                age.add_metric([c], max(0.0, now - s.last_frame_at))
            subscribed.add_metric([c], len(conn.subscriptions))
        yield from (packets, frames, received, errors, up, connects, ends, codes, age, subscribed, heartbeats, server_errors)
        yield GaugeMetricFamily(
            PREFIX + "feed_connections_open", "Feed connections open", value=float(sum(c.stats.connected for c in connections))
        )
        unknown = getattr(feed, "unknown_instrument_packets", None)
        if unknown is not None:
            yield CounterMetricFamily(
                PREFIX + "feed_unknown_instrument_packets_total", "Packets for instruments we did not subscribe",
                value=unknown,
            )

    def _ingest(self, ingest: Ingest) -> Iterator[Metric]:
        yield CounterMetricFamily(PREFIX + "ingest_batches_total", "Tick batches applied to the cache", value=ingest.batches)
        yield CounterMetricFamily(PREFIX + "ingest_ticks_total", "Ticks applied to the cache", value=ingest.ticks)
        latency = HistogramMetricFamily(
            PREFIX + "ingest_latency_seconds",
            "Receive-to-applied latency of the oldest tick of each batch (socket read to cache updated)",
        )
        h = self.ingest_latency
        latency.add_metric([], h.cumulative(), sum_value=h.sum)
        yield latency

    def _cache(self, now: float) -> Iterator[Metric]:
        cache = self.health.cache
        assert cache is not None  # checked by collect()
        subscribed = GaugeMetricFamily(
            PREFIX + "instruments_subscribed", "Instruments subscribed, by underlying", labels=["underlying"]
        )
        covered = GaugeMetricFamily(
            PREFIX + "instruments_covered", "Subscribed instruments that have received data, by underlying",
            labels=["underlying"],
        )
        for und, n in cache.subscribed_by_underlying.items():
            subscribed.add_metric([und], n)
            covered.add_metric([und], cache.covered_by_underlying[und])
        yield subscribed
        yield covered
        yield GaugeMetricFamily(
            PREFIX + "coverage_ratio", "Share of subscribed instruments that have received data", value=cache.coverage
        )
        yield CounterMetricFamily(
            PREFIX + "cache_unknown_ticks_total", "Ticks for instruments the cache does not hold", value=cache.ticks_unknown
        )
        version = GaugeMetricFamily(
            PREFIX + "chain_version", "Chain version (grows on every change; starts at the wall clock in µs)",
            labels=["underlying", "expiry"],
        )
        age = GaugeMetricFamily(
            PREFIX + "chain_age_seconds", "Seconds since the chain last changed", labels=["underlying", "expiry"]
        )
        stale = GaugeMetricFamily(
            PREFIX + "chain_stale_legs", "Legs of the chain whose feed connection was lost", labels=["underlying", "expiry"]
        )
        for (und, expiry), chain in cache.chains.items():
            labels = [und, expiry.isoformat()]
            version.add_metric(labels, chain.version)
            if chain.updated_at is not None:
                age.add_metric(labels, max(0.0, now - chain.updated_at))
            stale.add_metric(labels, chain.stale_legs)
        yield from (version, age, stale)

    def _http(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            PREFIX + "http_requests_total", "HTTP API requests, by route and status", labels=["route", "status"]
        )
        for (route, status), n in self.http.requests.items():
            requests.add_metric([route, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            PREFIX + "http_request_duration_seconds", "HTTP API request handling time, by route", labels=["route"]
        )
        for route, h in self.http.latency.items():
            latency.add_metric([route], h.cumulative(), sum_value=h.sum)
        yield latency
        ratio = self.http.not_modified_ratio()
        if ratio is not None:
            yield GaugeMetricFamily(
                PREFIX + "http_not_modified_ratio",
                "Since start, share of /options/live answers that were 304 Not Modified (304 / (200 + 304))",
                value=ratio,
            )

    def _connections(self) -> Iterator[Metric]:
        """``livechain_http_connections_*``: the counts ``service.listen.ConnectionGuard`` keeps, by port."""
        accepted = CounterMetricFamily(PREFIX + "http_connections_accepted", "TCP connections accepted", labels=["port"])
        refused = CounterMetricFamily(
            PREFIX + "http_connections_refused", "TCP connections refused with a 503 (over the cap)", labels=["port"]
        )
        timeouts = CounterMetricFamily(
            PREFIX + "http_connections_header_timeouts",
            "Connections closed for sending no whole request head within the idle timeout", labels=["port"],
        )
        open_ = GaugeMetricFamily(PREFIX + "http_connections_open", "TCP connections open now", labels=["port"])
        for label, guards in self.connection_guards:
            accepted.add_metric([label], sum(g.accepted for g in guards))
            refused.add_metric([label], sum(g.refused for g in guards))
            timeouts.add_metric([label], sum(g.header_timeouts for g in guards))
            open_.add_metric([label], sum(g.open for g in guards))
        yield from (accepted, refused, timeouts, open_)

    def _streams(self, app: web.Application) -> Iterator[Metric]:
        """``livechain_stream_*``: the SSE streams ``service.stream`` keeps count of."""
        from service.stream import stream_stats

        stats = stream_stats(app)
        yield GaugeMetricFamily(PREFIX + "stream_clients", "Open /options/stream streams", value=stats["open"])
        yield CounterMetricFamily(
            PREFIX + "stream_refused", "Streams refused with a 503 (over http.max_streams)", value=stats["refused"]
        )
        yield GaugeMetricFamily(PREFIX + "stream_chains", "Chains with at least one stream", value=stats["chains"])

    def _mirror(self, mirror: object) -> Iterator[Metric]:
        # Duck-typed: the mirror's stats object may lack fields; only what it has is exported.
        # ``last_error`` is never exported: free text that may quote a URL with a password.
        for attr, name, kind, doc in _MIRROR_FIELDS:
            value = getattr(mirror, attr, None)
            if value is None:
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(PREFIX + name, doc, value=float(value))


_MIRROR_FIELDS = (
    ("flushes", "mirror_flushes_total", "counter", "Redis mirror flushes (one pipeline each)"),
    ("legs_written", "mirror_legs_written_total", "counter", "Legs written to Redis"),
    ("commands", "mirror_commands_total", "counter", "Redis commands sent"),
    ("errors", "mirror_errors_total", "counter", "Redis mirror errors"),
    ("connected", "mirror_connected", "gauge", "1 while the Redis mirror is connected"),
    ("lag_s_last", "mirror_lag_seconds", "gauge", "Cache change to Redis write, at the last flush"),
    ("queue_depth", "mirror_queue_depth", "gauge", "Chains waiting to be written to Redis"),
    ("full_rewrites", "mirror_full_rewrites_total", "counter", "Full rewrites of the state in Redis"),
    ("verifications", "mirror_verifications_total", "counter", "Checks that Redis still holds the mirror's run"),
    ("state_lost", "mirror_state_lost_total", "counter",
     "Times Redis was found without the mirror's state (restart, FLUSHALL, failover) and rewritten"),
)


class Metrics:
    """The registry and what feeds it; ``render()`` is one scrape."""

    def __init__(self, health: Health, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = HttpMetrics()
        self.ingest_latency = Histogram(INGEST_LATENCY_BUCKETS_S)
        self.collector = LivechainCollector(health, self.http, self.ingest_latency, clock)
        self.registry.register(self.collector)
        # CPU, memory, open files of this process (Linux /proc; absent elsewhere).
        ProcessCollector(namespace="livechain", registry=self.registry)

    def attach_ingest(self, ingest: Ingest) -> None:
        self.collector.ingest = ingest

    def attach_tasks(self, supervisor: Supervisor) -> None:
        """``livechain_task_{crashes,restarts}_total`` from a ``service.tasks.Supervisor``'s counts."""
        self.collector.tasks = supervisor

    def attach_connections(self, label: str, app: web.Application) -> None:
        """Export the connection counts of the port(s) ``app`` is served on, labelled ``port=label``."""
        self.collector.connection_guards.append((label, app.setdefault(GUARDS, [])))

    def attach_streams(self, app: web.Application) -> None:
        """Export the counts of ``app``'s SSE streams (``livechain_stream_*``)."""
        self.collector.streams = app

    def attach_history(self, store: object | None) -> None:
        self.collector.history = store

    def attach_analytics(self, runner: object | None, seeder: object | None = None) -> None:
        self.collector.analytics = runner
        self.collector.seeder = seeder

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    phase = request.app[METRICS].collector.health.lifecycle.phase
    return web.json_response({"status": "alive", "phase": phase.value})


async def _readyz(request: web.Request) -> web.Response:
    report = request.app[METRICS].collector.health.report()
    return web.json_response(report.as_dict(), status=200 if report.ready else 503)


def make_metrics_app(metrics: Metrics) -> web.Application:
    """``/metrics``, plus ``/healthz`` and ``/readyz``: this port is up during warm-up, the API's is not."""
    app = web.Application()
    app[METRICS] = metrics
    metrics.attach_connections("metrics", app)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


# Prometheus and probes need few connections: a flood on this port must not starve the API or the feed.
METRICS_MAX_CONNECTIONS = 64
METRICS_IDLE_TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def metrics_server(metrics: Metrics, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``metrics`` on ``host:port``; yields the bound port (useful when ``port`` is 0).

    Bounded like the API port (``service.listen``): at most ``METRICS_MAX_CONNECTIONS`` open,
    idle and header timeouts; a port in use or a wrong host is a ConfigError naming the key."""
    sock = bind_socket(host, port, host_key="metrics.host", port_key="metrics.port")
    async with guarded_server(
        make_metrics_app(metrics), sock, max_connections=METRICS_MAX_CONNECTIONS,
        idle_timeout_s=METRICS_IDLE_TIMEOUT_S, keepalive_timeout_s=METRICS_IDLE_TIMEOUT_S, name="metrics",
    ) as site:  # fmt: skip
        log.info("metrics on http://%s:%d/metrics", host, site.port, extra={"metrics_port": site.port})
        yield site.port
