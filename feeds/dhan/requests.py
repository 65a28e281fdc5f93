"""Dhan v2 client→server JSON requests (reference §2): encode, and parse for the simulator.

    {"RequestCode": 21, "InstrumentCount": 2,
     "InstrumentList": [{"ExchangeSegment": "NSE_FNO", "SecurityId": "55796"}, ...]}

Subscribe/unsubscribe messages carry at most 100 instruments; ``SecurityId`` is a string and
``ExchangeSegment`` the segment's name. Disconnect is ``{"RequestCode": 12}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from feeds.errors import SubscriptionError
from feeds.model import InstrumentKey, Segment
from feeds.dhan.packets import FeedMode, RequestCode

MAX_INSTRUMENTS_PER_MESSAGE = 100
MAX_INSTRUMENTS_PER_CONNECTION = 5000
MAX_CONNECTIONS = 5

_SUBSCRIBE = {m.value: m for m in FeedMode}
_UNSUBSCRIBE = {m.unsubscribe_code: m for m in FeedMode}


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """One parsed subscribe or unsubscribe message."""

    mode: FeedMode
    subscribe: bool
    instruments: tuple[InstrumentKey, ...]


@dataclass(frozen=True, slots=True)
class DisconnectRequest:
    pass


def _batches(keys: Iterable[InstrumentKey], size: int) -> Iterator[list[InstrumentKey]]:
    batch: list[InstrumentKey] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _message(code: int, batch: list[InstrumentKey]) -> str:
    return orjson.dumps(
        {
            "RequestCode": code,
            "InstrumentCount": len(batch),
            "InstrumentList": [
                {"ExchangeSegment": Segment(seg).name, "SecurityId": str(sid)} for seg, sid in batch
            ],
        }
    ).decode()


def subscribe_messages(mode: FeedMode, keys: Iterable[InstrumentKey]) -> list[str]:
    """Subscribe ``keys`` in ``mode``, in messages of at most 100 instruments."""
    return [_message(mode.value, b) for b in _batches(keys, MAX_INSTRUMENTS_PER_MESSAGE)]


def unsubscribe_messages(mode: FeedMode, keys: Iterable[InstrumentKey]) -> list[str]:
    """Unsubscribe ``keys`` from ``mode`` (the mode's own unsubscribe code)."""
    return [_message(mode.unsubscribe_code, b) for b in _batches(keys, MAX_INSTRUMENTS_PER_MESSAGE)]


def disconnect_message() -> str:
    return orjson.dumps({"RequestCode": RequestCode.DISCONNECT}).decode()


def parse_request(text: str | bytes) -> SubscriptionRequest | DisconnectRequest:
    """Parse one client message as Dhan's server would; raise SubscriptionError if invalid."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SubscriptionError(f"request is not JSON: {exc}") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("RequestCode"), int):
        raise SubscriptionError("request has no integer RequestCode")
    code = msg["RequestCode"]
    if code == RequestCode.DISCONNECT:
        return DisconnectRequest()
    if code in _SUBSCRIBE:
        mode, subscribe = _SUBSCRIBE[code], True
    elif code in _UNSUBSCRIBE:
        mode, subscribe = _UNSUBSCRIBE[code], False
    else:
        raise SubscriptionError(f"unsupported RequestCode {code}")
    items = msg.get("InstrumentList")
    if not isinstance(items, list):
        raise SubscriptionError("InstrumentList must be a list")
    if msg.get("InstrumentCount") != len(items):
        raise SubscriptionError(f"InstrumentCount {msg.get('InstrumentCount')!r} != {len(items)} listed")
    if len(items) > MAX_INSTRUMENTS_PER_MESSAGE:
        raise SubscriptionError(f"{len(items)} instruments in one message; at most {MAX_INSTRUMENTS_PER_MESSAGE}")
    keys = []
    for item in items:
        try:
            seg = Segment[item["ExchangeSegment"]]
            sid = item["SecurityId"]
            # isdigit() alone accepts digits such as "²" that int() rejects, and the id
            # must fit the packet header's uint32.
            if not isinstance(sid, str) or not (sid.isascii() and sid.isdigit()) or int(sid) >= 2**32:
                raise ValueError(sid)
        except (KeyError, TypeError, ValueError) as exc:
            raise SubscriptionError(f"bad instrument entry {item!r}") from exc
        keys.append((int(seg), int(sid)))
    return SubscriptionRequest(mode, subscribe, tuple(keys))
