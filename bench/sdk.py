"""The official DhanHQ SDK's packet decoder, as a baseline.

``MarketFeed.__init__`` needs credentials and creates (and installs) a new asyncio event loop,
none of which decoding uses: ``process_data`` only calls ``struct`` and ``self.utc_time``
(a plain method), so an instance made with ``__new__`` decodes the same way without side
effects. Nothing here opens a connection.

Never feed it code 50: the SDK handles a disconnect packet by printing and calling
``self.on_close``, which this bare instance does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from dhanhq.marketfeed import MarketFeed

NAME = f"dhanhq {version('dhanhq')} MarketFeed.process_data"


def sdk_decoder() -> Callable[[bytes], Any]:
    """The SDK's ``process_data`` bound to an instance that skipped ``__init__``."""
    feed = MarketFeed.__new__(MarketFeed)
    return feed.process_data
