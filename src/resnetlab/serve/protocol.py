"""The HTTP connection guard: uvicorn's h11 protocol, plus a deadline for each request and a cap on connections
per client address. Without them an idle or slow client holds its connection forever (uvicorn times out only
between requests), and ~130 of them make every other client get 503 (measured: issue 14).

    config = server_config(app, host="127.0.0.1", port=8000, limits=ServeLimits())
    uvicorn.Server(config).run()
"""

from __future__ import annotations

import asyncio
from collections import Counter

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import ServeLimits

_RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)  # the client has sent all it will


def guarded_protocol(request_timeout_s: float, max_per_client: int) -> type[H11Protocol]:
    """An H11Protocol class whose connections must deliver each whole request (headers and body) within
    ``request_timeout_s`` seconds of its first byte (or of connecting), at most ``max_per_client`` at a time per
    client address. Each server gets its own class (and counts)."""
    open_per_client: Counter = Counter()

    class GuardedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _host: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._host = self.client[0] if self.client else None
            open_per_client[self._host] += 1
            if open_per_client[self._host] > max_per_client:
                transport.close()  # over this client's share: the other clients keep theirs
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            open_per_client[self._host] -= 1
            if open_per_client[self._host] <= 0:
                del open_per_client[self._host]
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state in _RECEIVED:
                self._disarm()  # the request is in: its handling may take as long as it needs
            elif self._deadline is None:
                self._arm()  # the first bytes of the next request on a kept-alive connection

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(request_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.conn.their_state not in _RECEIVED and not self.transport.is_closing():
                self.transport.close()  # idle or too slow: the connection goes back to the pool

    return GuardedH11


def server_config(app, *, host: str, port: int, limits: ServeLimits, log_level: str = "info",  # noqa: ANN001
                  **extra) -> uvicorn.Config:
    """uvicorn's Config for ``app`` with the connection guard; limit_concurrency: connections beyond it get 503
    before any body is read."""
    protocol = guarded_protocol(limits.request_timeout_s, limits.max_connections_per_client)
    return uvicorn.Config(app, host=host, port=port, http=protocol, limit_concurrency=limits.max_connections,
                          log_level=log_level, timeout_keep_alive=5, **extra)
