"""The history routes: ``/options/history``, ``/options/history/legs``, ``/options/history/times``,
and ``at=`` on ``/options/live`` (README "History"). Same error shape and ETags as the rest.

Times (``from``, ``to``, ``at``) are ISO-8601 instants; a naive one is IST. Every ``t`` out is
written as ``as_of`` is, with the IST offset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from service.history.model import LEG_FIELDS, ChainDay, Sample, leg_series, parse_instant, point, ist_of_us, day_of_us
from service.history.store import HistorySource
from service.redis.client import REDIS_ERRORS as _REDIS_ERRORS

if TYPE_CHECKING:
    from service.http import Routes

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_INTERVAL = re.compile(r"([0-9]{1,5})([smh]?)", re.ASCII)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}
MAX_STRIKES = 200


def _api_error(status: int, code: str, message: str) -> Exception:
    from service.http import ApiError

    return ApiError(status, code, message)


def _source(request: web.Request) -> HistorySource:
    from service.http import CONTEXT

    history = request.app[CONTEXT].history
    if history is None:
        raise _api_error(404, "history_off", "history is off on this process (history.enabled = false)")
    return history


def _chain(request: web.Request, *, require_expiry: bool = False) -> tuple[str, dt.date]:
    """(underlying, expiry) of the query: the underlying must be served; expiry as YYYY-MM-DD
    (any date: an expired chain's history may be asked for), default the nearest."""
    from service.http import CONTEXT, symbol_param

    chains = request.app[CONTEXT].chains
    underlying = symbol_param(request, "underlying")
    if chains.expiries(underlying) is None:
        raise _api_error(404, "unknown_underlying", f"underlying {underlying!r} is not served; see /options/underlyings")
    raw = request.query.get("expiry", "")
    if not raw:
        if require_expiry:
            raise _api_error(400, "missing_parameter", "query parameter 'expiry' is required, e.g. ?expiry=2026-11-24")
        expiry = chains.nearest_expiry(underlying)
        if expiry is None:
            raise _api_error(404, "no_expiry", f"{underlying} has no unexpired expiry loaded")
        return underlying, expiry
    try:
        if not _DATE.fullmatch(raw):
            raise ValueError
        return underlying, dt.date.fromisoformat(raw)
    except ValueError:
        raise _api_error(400, "bad_parameter", "'expiry' must be a date as YYYY-MM-DD") from None


def _instant(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_instant(raw)
    except (ValueError, OverflowError):
        raise _api_error(
            400, "bad_parameter", f"{name!r} must be an ISO-8601 instant, e.g. 2026-11-23T10:30:00+05:30 (naive: IST)"
        ) from None


def _interval_us(request: web.Request, source: HistorySource) -> int | None:
    raw = request.query.get("interval")
    if raw is None or raw == "":
        return None
    m = _INTERVAL.fullmatch(raw.strip())
    seconds = int(m.group(1)) * _UNIT[m.group(2)] if m else 0
    base = source.interval_s
    ratio = seconds / base if base else 0
    if seconds <= 0 or seconds > 86_400 or abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise _api_error(
            400, "bad_parameter",
            f"'interval' must be a multiple of history.interval_s ({base:g} s), as seconds or with s/m/h, e.g. 300 or 5m",
        )  # fmt: skip
    return None if round(ratio) == 1 else seconds * 1_000_000


async def _window(request: web.Request, source: HistorySource, underlying: str, expiry: dt.date
                  ) -> tuple[list[Sample], int]:  # fmt: skip
    """The samples ``from``/``to``/``interval`` select (default: today's), and the step in seconds."""
    try:
        return await _window_of(request, source, underlying, expiry)
    except (TimeoutError, *_REDIS_ERRORS) as exc:
        raise _unavailable(exc) from None


def _unavailable(exc: BaseException) -> Exception:
    """A replica whose Redis does not answer: 503, like its /readyz."""
    return _api_error(503, "history_unavailable", f"history cannot be read now ({type(exc).__name__}); retry")


async def _window_of(request: web.Request, source: HistorySource, underlying: str, expiry: dt.date
                     ) -> tuple[list[Sample], int]:  # fmt: skip
    from_us, to_us = _instant(request, "from"), _instant(request, "to")
    await source.sync()
    step = _interval_us(request, source)
    if from_us is not None and to_us is not None and from_us > to_us:
        raise _api_error(400, "bad_parameter", "'from' must not be after 'to'")
    if from_us is None and to_us is None:
        days = [source.today()]
    else:
        first = day_of_us(from_us) if from_us is not None else day_of_us(to_us)  # type: ignore[arg-type]
        last = day_of_us(to_us) if to_us is not None else max(first, source.today())
        span = (last - first).days + 1
        if span > source.max_query_days:
            raise _api_error(400, "bad_parameter",
                             f"from..to spans {span} days; at most {source.max_query_days} (history.max_query_days)")
        days = [first + dt.timedelta(days=i) for i in range(span)]
    samples: list[Sample] = []
    for day in days:
        cd: ChainDay | None = await source.chain_day(underlying, expiry, day)
        if cd is not None:
            samples.extend(cd.window(from_us, to_us, step))
    interval_s = step // 1_000_000 if step else source.interval_s
    return samples, interval_s


def _tagged(request: web.Request, body: bytes, etag: str | None = None) -> web.StreamResponse:
    """``body`` with its ETag (a hash of it, or the one given: at= repeats the tag the body was sent with)."""
    from service.http import not_modified

    if etag is None:
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type="application/json")


def _interval_out(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


async def _per_sample(request: web.Request, name: str, of: Callable[[Sample], object]) -> web.StreamResponse:
    """The chain's samples in the asked window, as ``name``: one ``of(sample)`` each."""
    source = _source(request)
    underlying, expiry = _chain(request)
    samples, interval_s = await _window(request, source, underlying, expiry)
    body = orjson.dumps({
        "underlying": underlying, "expiry": expiry, "interval_s": _interval_out(interval_s),
        name: [of(s) for s in samples],
    })  # fmt: skip
    return _tagged(request, body)


async def history(request: web.Request) -> web.StreamResponse:
    return await _per_sample(request, "points", point)


async def history_times(request: web.Request) -> web.StreamResponse:
    return await _per_sample(request, "t", lambda s: ist_of_us(s.t_us))


async def history_legs(request: web.Request) -> web.StreamResponse:
    source = _source(request)
    underlying, expiry = _chain(request)
    raw = request.query.get("strikes", "").strip()
    if not raw:
        raise _api_error(400, "missing_parameter", "query parameter 'strikes' is required, e.g. ?strikes=24000,24050")
    try:
        strikes = list(dict.fromkeys(float(s) for s in raw.split(",")))
        if not all(s == s and abs(s) < 1e12 for s in strikes):
            raise ValueError
    except ValueError:
        raise _api_error(400, "bad_parameter", "'strikes' must be numbers separated by commas") from None
    if len(strikes) > MAX_STRIKES:
        raise _api_error(400, "bad_parameter", f"at most {MAX_STRIKES} strikes per request")
    raw_fields = request.query.get("fields", "")
    fields = list(dict.fromkeys(f.strip() for f in raw_fields.split(",") if f.strip())) or list(LEG_FIELDS)
    unknown = [f for f in fields if f not in LEG_FIELDS]
    if unknown:
        raise _api_error(400, "bad_parameter",
                         f"unknown field {unknown[0][:32]!r}; fields are {', '.join(LEG_FIELDS)}")  # fmt: skip
    samples, interval_s = await _window(request, source, underlying, expiry)
    known = _known_strikes(request, underlying, expiry, samples)
    missing = [s for s in strikes if s not in known]
    if missing:
        raise _api_error(404, "no_strike", f"{underlying} {expiry.isoformat()} has no strike {missing[0]!r}")
    legs = leg_series(samples, strikes, fields)
    body = orjson.dumps({
        "underlying": underlying, "expiry": expiry, "interval_s": _interval_out(interval_s), "fields": fields,
        "t": [ist_of_us(s.t_us) for s in samples], "legs": legs,
    })  # fmt: skip
    return _tagged(request, body)


def _known_strikes(request: web.Request, underlying: str, expiry: dt.date, samples: list[Sample]) -> set[float]:
    from service.http import CONTEXT

    known: set[float] = set()
    for layout in {s.strikes for s in samples}:
        known.update(layout)
    snap = request.app[CONTEXT].chains.snapshot(underlying, expiry)
    if snap is not None:
        known.update(row[0] for row in getattr(snap, "rows", None) or ())
    return known


async def live_at(request: web.Request) -> web.StreamResponse:
    """``/options/live?…&at=``: the body of the chain's last sample at or before ``at``."""
    if request.query.get("format", "json") != "json":
        raise _api_error(400, "bad_parameter", "'at' serves the chain's JSON body as sampled; format=nse has no history")
    source = _source(request)
    underlying, expiry = _chain(request)
    at_us = _instant(request, "at")
    assert at_us is not None
    try:
        found = await source.body_at(underlying, expiry, at_us)
    except (TimeoutError, *_REDIS_ERRORS) as exc:
        raise _unavailable(exc) from None
    if found is None:
        raise _api_error(404, "no_history",
                         f"no sample of {underlying} {expiry.isoformat()} at or before {request.query['at'][:40]}")  # fmt: skip
    _, body, etag = found
    return _tagged(request, body, etag or None)


def add_routes(routes: Routes) -> None:
    routes.get("/options/history", history)
    routes.get("/options/history/legs", history_legs)
    routes.get("/options/history/times", history_times)
