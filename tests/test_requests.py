"""Client→server JSON requests (reference §2): batching, exact shape, and the simulator's parser."""

from __future__ import annotations

import json

import pytest

from feeds.dhan.packets import FeedMode
from feeds.dhan.requests import (
    MAX_INSTRUMENTS_PER_MESSAGE,
    DisconnectRequest,
    SubscriptionRequest,
    disconnect_message,
    parse_request,
    subscribe_messages,
    unsubscribe_messages,
)
from feeds.errors import SubscriptionError
from feeds.model import Segment

NSE_FNO = int(Segment.NSE_FNO)
KEYS = [(int(Segment.IDX_I), 13), (NSE_FNO, 55796), (int(Segment.BSE_FNO), 1100470)]


def test_exact_shape() -> None:
    """PascalCase keys, InstrumentCount, segment names and SecurityId as a string."""
    [message] = subscribe_messages(FeedMode.FULL, KEYS)
    assert json.loads(message) == {
        "RequestCode": 21,
        "InstrumentCount": 3,
        "InstrumentList": [
            {"ExchangeSegment": "IDX_I", "SecurityId": "13"},
            {"ExchangeSegment": "NSE_FNO", "SecurityId": "55796"},
            {"ExchangeSegment": "BSE_FNO", "SecurityId": "1100470"},
        ],
    }
    assert '"SecurityId":"13"' in message  # a JSON string on the wire, not a number


@pytest.mark.parametrize("segment", list(Segment))
def test_every_segment_name(segment: Segment) -> None:
    """Each segment travels as its reference §2.4 name."""
    [message] = subscribe_messages(FeedMode.TICKER, [(int(segment), 1)])
    assert json.loads(message)["InstrumentList"][0]["ExchangeSegment"] == segment.name


@pytest.mark.parametrize(
    ("mode", "subscribe_code", "unsubscribe_code"),
    [(FeedMode.TICKER, 15, 16), (FeedMode.QUOTE, 17, 18), (FeedMode.FULL, 21, 22)],
)
def test_request_codes(mode: FeedMode, subscribe_code: int, unsubscribe_code: int) -> None:
    """Subscribe 15/17/21 and the matching unsubscribe 16/18/22."""
    assert json.loads(subscribe_messages(mode, KEYS)[0])["RequestCode"] == subscribe_code
    assert json.loads(unsubscribe_messages(mode, KEYS)[0])["RequestCode"] == unsubscribe_code


@pytest.mark.parametrize(("count", "sizes"), [(0, []), (1, [1]), (100, [100]), (101, [100, 1]), (250, [100, 100, 50])])
def test_batches_of_at_most_100(count: int, sizes: list[int]) -> None:
    """Instruments are split into messages of at most 100, in order, each with its own count."""
    keys = [(NSE_FNO, 40000 + i) for i in range(count)]
    for build in (subscribe_messages, unsubscribe_messages):
        messages = [json.loads(m) for m in build(FeedMode.QUOTE, iter(keys))]
        assert [m["InstrumentCount"] for m in messages] == sizes
        assert all(len(m["InstrumentList"]) == m["InstrumentCount"] for m in messages)
        sent = [int(i["SecurityId"]) for m in messages for i in m["InstrumentList"]]
        assert sent == [sid for _, sid in keys]
    assert MAX_INSTRUMENTS_PER_MESSAGE == 100


def test_disconnect_message() -> None:
    """Disconnect is exactly {"RequestCode":12}."""
    assert json.loads(disconnect_message()) == {"RequestCode": 12}
    assert parse_request(disconnect_message()) == DisconnectRequest()


@pytest.mark.parametrize("mode", list(FeedMode))
def test_parse_round_trip(mode: FeedMode) -> None:
    """parse_request reads back what subscribe_messages/unsubscribe_messages wrote."""
    [sub] = subscribe_messages(mode, KEYS)
    [unsub] = unsubscribe_messages(mode, KEYS)
    assert parse_request(sub) == SubscriptionRequest(mode, True, tuple(KEYS))
    assert parse_request(unsub.encode()) == SubscriptionRequest(mode, False, tuple(KEYS))


def _request(items: list[object], *, code: int = 15, count: int | None = None) -> str:
    return json.dumps(
        {"RequestCode": code, "InstrumentCount": len(items) if count is None else count, "InstrumentList": items}
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not JSON"),
        ("[15]", "RequestCode"),
        ('{"RequestCode": "15"}', "RequestCode"),
        ('{"RequestCode": 23}', "unsupported RequestCode 23"),
        ('{"RequestCode": 15, "InstrumentCount": 0}', "InstrumentList"),
        (_request([{"ExchangeSegment": "NSE_FNO", "SecurityId": "1"}], count=2), "InstrumentCount"),
        (_request([{"ExchangeSegment": "NSE_FNO", "SecurityId": str(i)} for i in range(101)]), "at most 100"),
        (_request([{"ExchangeSegment": "NSE_FO", "SecurityId": "1"}]), "bad instrument"),
        (_request([{"ExchangeSegment": 2, "SecurityId": "1"}]), "bad instrument"),
        (_request([{"ExchangeSegment": "NSE_FNO", "SecurityId": 55796}]), "bad instrument"),
        (_request([{"ExchangeSegment": "NSE_FNO", "SecurityId": "-1"}]), "bad instrument"),
        (_request([{"ExchangeSegment": "NSE_FNO", "SecurityId": "\u00b2"}]), "bad instrument"),
        (_request([{"ExchangeSegment": "NSE_FNO"}]), "bad instrument"),
        (_request(["NSE_FNO:1"]), "bad instrument"),
    ],
)
def test_parse_errors(text: str, match: str) -> None:
    """Malformed requests raise SubscriptionError, never another exception."""
    with pytest.raises(SubscriptionError, match=match):
        parse_request(text)
