"""The OpenAPI 3.1 description of the public HTTP API, served at ``GET /openapi.json`` by the
primary and by replicas (the same routes answer on both).

It is written out here, next to nothing else, and ``tests/test_openapi.py`` keeps it honest:
every route registered on the app must be documented (and nothing else), and schemathesis
drives every documented operation against a running service, checking that no answer is a 5xx
beyond the documented 503s and that every error is the documented ``Error`` body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from service.http import Routes

ERROR = {"$ref": "#/components/schemas/Error"}
JSON_OBJECT: dict[str, Any] = {"type": "object"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _ok(description: str, schema: dict[str, Any] | None = None, media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema or JSON_OBJECT}}}


UNDERLYING = {
    "name": "underlying", "in": "query", "required": True,
    "description": "An underlying symbol, ASCII letters, digits, '-' and '&' (1-32), e.g. NIFTY",
    "schema": {"type": "string"},
}  # fmt: skip
EXPIRY = {
    "name": "expiry", "in": "query", "required": False,
    "description": "An expiry as YYYY-MM-DD; default the nearest unexpired",
    "schema": {"type": "string"},
}  # fmt: skip
COMMON_ERRORS = {
    "401": _error("An API key is required (only when http.api_keys are configured); see WWW-Authenticate"),
    "405": _error("Method not allowed"),
    "503": _error("Too many open connections (http.max_connections)"),
}
CHAIN_ERRORS = {
    "400": _error("Bad or missing parameter"),
    "404": _error("Unknown underlying or expiry"),
    **COMMON_ERRORS,
}


def _get(summary: str, responses: dict[str, Any], parameters: list[dict[str, Any]] | None = None,
         *, secured: bool = True) -> dict[str, Any]:  # fmt: skip
    op: dict[str, Any] = {"summary": summary, "parameters": parameters or [], "responses": responses}
    if not secured:
        op["security"] = []
    return {"get": op}


HISTORY_ERRORS = {
    "400": _error("Bad or missing parameter (times, interval, strikes, fields)"),
    "404": _error("Unknown underlying or strike, no history for that time (no_history), or history off on this process (history_off)"),
    **COMMON_ERRORS,
}
_TIME = {"type": "string", "description": "ISO-8601 instant with the IST offset, as as_of"}


def _history_paths() -> dict[str, Any]:
    """/options/history* (README 'History'): series sampled every history.interval_s."""
    window = [
        {"name": "from", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "ISO-8601 instant (naive: IST); default: today's samples"},
        {"name": "to", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "ISO-8601 instant (naive: IST)"},
        {"name": "interval", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "A multiple of history.interval_s: seconds, or 5m, 15m, 1h; the last sample per bucket"},
    ]  # fmt: skip
    side = {"type": "object", "properties": {k: {"type": ["integer", "null"]} for k in ("oi", "oi_change", "volume")}}
    number = {"type": ["number", "null"]}
    point = {
        "type": "object",
        "required": ["t"],
        "properties": {
            "t": _TIME,
            **{k: number for k in ("underlying_ltp", "forward", "atm_strike", "atm_iv", "atm_straddle", "pcr_oi",
                                   "pcr_volume", "max_pain")},
            "ce": side, "pe": side,
        },
    }  # fmt: skip
    head = {"underlying": {"type": "string"}, "expiry": {"type": "string", "format": "date"},
            "interval_s": {"type": "number"}}  # fmt: skip
    return {
        "/options/history": _get(
            "The chain-level series of one chain (ETag; If-None-Match gives 304)",
            {"200": _ok("Points, oldest first", {"type": "object", "properties": {
                **head, "points": {"type": "array", "items": point}}}),
             "304": {"description": "Not modified"}, **HISTORY_ERRORS},
            [UNDERLYING, EXPIRY, *window],
        ),  # fmt: skip
        "/options/history/legs": _get(
            "Per-leg series (ltp, oi, volume, iv) of some strikes of one chain",
            {"200": _ok("Arrays aligned with t", {"type": "object", "properties": {
                **head, "fields": {"type": "array", "items": {"type": "string"}},
                "t": {"type": "array", "items": _TIME}, "legs": JSON_OBJECT}}),
             "304": {"description": "Not modified"}, **HISTORY_ERRORS},
            [UNDERLYING, EXPIRY,
             {"name": "strikes", "in": "query", "required": True, "schema": {"type": "string"},
              "description": "Strikes separated by commas, e.g. 24000,24050"},
             {"name": "fields", "in": "query", "required": False, "schema": {"type": "string"},
              "description": "Some of ltp, oi, volume, iv (default all), separated by commas"},
             *window],
        ),  # fmt: skip
        "/options/history/times": _get(
            "The sample times held for one chain (today's by default)",
            {"200": _ok("Times", {"type": "object", "properties": {**head, "t": {"type": "array", "items": _TIME}}}),
             "304": {"description": "Not modified"}, **HISTORY_ERRORS},
            [UNDERLYING, EXPIRY, *window],
        ),  # fmt: skip
    }


def document() -> dict[str, Any]:
    """The whole description (a fresh dict)."""
    chain = {
        "type": "object",
        "required": ["underlying", "expiry", "version", "stale", "strikes"],
        "properties": {
            "underlying": {"type": "string"},
            "expiry": {"type": "string", "format": "date"},
            "underlying_ltp": {"type": ["number", "null"]},
            "lot_size": {"type": "integer"},
            "as_of": {"type": ["string", "null"]},
            "version": {"type": "integer"},
            "stale": {"type": "boolean"},
            "strikes": {"type": "array", "items": JSON_OBJECT},
        },
    }
    paths = {
        "/options/live": _get(
            "The option chain of one underlying and expiry (ETag; If-None-Match gives 304)",
            {"200": _ok("The chain", chain), "304": {"description": "Not modified"}, **CHAIN_ERRORS},
            [UNDERLYING, EXPIRY, {
                "name": "format", "in": "query", "required": False,
                "description": "json (default) or nse (NSE's option-chain shape)",
                "schema": {"type": "string", "enum": ["json", "nse"]},
            }, {
                "name": "at", "in": "query", "required": False,
                "description": "The chain as sampled at the last sample at or before this ISO-8601 instant "
                "(naive: IST): exactly the body served then; 404 no_history when there is none (README 'History')",
                "schema": {"type": "string"},
            }],
        ),  # fmt: skip
        **_history_paths(),
        "/options/underlyings": _get(
            "Underlyings served, with expiries, lot sizes and strike counts",
            {"200": _ok("The list"), **COMMON_ERRORS},
        ),
        "/options/stream": _get(
            "Server-Sent Events: the chain, then its changes (README 'Live push')",
            {"200": _ok("An event stream", {"type": "string"}, "text/event-stream"), **CHAIN_ERRORS},
            [UNDERLYING, EXPIRY, {
                "name": "last_event_id", "in": "query", "required": False,
                "description": "Resume after this event id (as the Last-Event-ID header)",
                "schema": {"type": "string"},
            }],
        ),  # fmt: skip
        "/api/option-chain-indices": _get(
            "NSE-compatible option chain of an index (NSE's JSON shape)",
            {"200": _ok("NSE's shape"), **CHAIN_ERRORS},
            [{"name": "symbol", "in": "query", "required": True, "schema": {"type": "string"}}],
        ),
        "/api/option-chain-contract-info": _get(
            "NSE-compatible expiry dates and strikes of a symbol",
            {"200": _ok("NSE's shape"), **CHAIN_ERRORS},
            [{"name": "symbol", "in": "query", "required": True, "schema": {"type": "string"}}],
        ),
        "/api/option-chain-v3": _get(
            "NSE-compatible option chain of one expiry (DD-Mon-YYYY)",
            {"200": _ok("NSE's shape"), **CHAIN_ERRORS},
            [
                {"name": "symbol", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "expiry", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "type", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
        ),
        "/": _get("The live option-chain page (static HTML)", {"200": _ok("HTML", {"type": "string"}, "text/html")},
                  secured=False),  # fmt: skip
        "/static/{name}": _get(
            "The page's static files",
            {"200": {"description": "A file"}, "404": _error("No such file")},
            [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            secured=False,
        ),
        "/healthz": _get("Liveness: 200 while the event loop answers", {"200": _ok("Alive")}, secured=False),
        "/readyz": _get(
            "Readiness: 200 when ready or degraded, 503 when not serving",
            {"200": _ok("Ready"), "503": _ok("Not ready")}, secured=False,
        ),  # fmt: skip
        "/openapi.json": _get("This document", {"200": _ok("OpenAPI 3.1")}, secured=False),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "livechain",
            "version": "1",
            "description": "Live option chains for Indian derivatives (README.md). Errors are always "
            "{\"error\": {\"code\", \"message\"}}.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "additionalProperties": False,
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "additionalProperties": False,
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        # Only when http.api_keys are configured; the probes, the page and this document are open.
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    }


_BODY = orjson.dumps(document())


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_BODY, content_type="application/json", headers={"Cache-Control": "no-cache"})


def add_routes(routes: Routes) -> None:
    routes.get("/openapi.json", openapi_json)
