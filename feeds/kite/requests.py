"""Kite ticker client messages (kite-protocol.md §2): JSON text frames, built and parsed.

    subscribe    {"a": "subscribe", "v": [408065, 884737]}
    unsubscribe  {"a": "unsubscribe", "v": [408065]}
    mode         {"a": "mode", "v": ["full", [408065, 884737]]}

A subscribe is always followed by a mode message: the mode after a bare subscribe is the
SDK's bookkeeping (quote), not a documented promise. Kite allows 3000 instruments per
connection and 3 connections per API key; no per-message limit is documented, so messages
are chunked at ``MAX_TOKENS_PER_MESSAGE`` only to keep frames small.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from feeds.connection import check_connection_budget, split_connections
from feeds.errors import SubscriptionError
from feeds.kite.packets import Mode

MAX_CONNECTIONS = 3
MAX_INSTRUMENTS_PER_CONNECTION = 3000
MAX_TOKENS_PER_MESSAGE = 1000
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class KiteRequest:
    action: str  # "subscribe", "unsubscribe" or "mode"
    tokens: tuple[int, ...]
    mode: Mode | None = None  # only for "mode"


def _chunks(tokens: Iterable[int]) -> list[list[int]]:
    items = list(tokens)
    return [items[i : i + MAX_TOKENS_PER_MESSAGE] for i in range(0, len(items), MAX_TOKENS_PER_MESSAGE)]


def subscribe_messages(mode: Mode, tokens: Iterable[int]) -> list[str]:
    """Subscribe ``tokens`` and set their mode: a subscribe then a mode message per chunk."""
    out = []
    for chunk in _chunks(tokens):
        out.append(orjson.dumps({"a": "subscribe", "v": chunk}).decode())
        out.append(orjson.dumps({"a": "mode", "v": [str(mode), chunk]}).decode())
    return out


def unsubscribe_messages(tokens: Iterable[int]) -> list[str]:
    return [orjson.dumps({"a": "unsubscribe", "v": chunk}).decode() for chunk in _chunks(tokens)]


def mode_messages(mode: Mode, tokens: Iterable[int]) -> list[str]:
    return [orjson.dumps({"a": "mode", "v": [str(mode), chunk]}).decode() for chunk in _chunks(tokens)]


def _tokens(value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise SubscriptionError("'v' must list instrument tokens")
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 < t <= _UINT32_MAX:
            raise SubscriptionError(f"bad instrument token {t!r}")
    return tuple(value)


def parse_request(text: str | bytes) -> KiteRequest:
    """A client message as the server reads it; ``SubscriptionError`` says what is wrong."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise SubscriptionError("request is not JSON") from None
    if not isinstance(msg, dict):
        raise SubscriptionError("request is not a JSON object")
    action, value = msg.get("a"), msg.get("v")
    if action in ("subscribe", "unsubscribe"):
        return KiteRequest(action, _tokens(value))
    if action == "mode":
        if not isinstance(value, list) or len(value) != 2 or value[0] not in tuple(Mode):
            raise SubscriptionError('mode request must be {"a": "mode", "v": ["ltp"|"quote"|"full", [tokens]]}')
        return KiteRequest("mode", _tokens(value[1]), Mode(value[0]))
    raise SubscriptionError(f"unknown action {action!r}")


def check_budget(count: int) -> None:
    """Fail with the numbers when ``count`` instruments cannot fit Kite's connection budget."""
    check_connection_budget(count, "Kite", MAX_CONNECTIONS, MAX_INSTRUMENTS_PER_CONNECTION)


def shard(tokens: Sequence[int]) -> list[list[int]]:
    check_budget(len(tokens))
    return split_connections(tokens, MAX_INSTRUMENTS_PER_CONNECTION)
