"""uvicorn's HTTP protocol, with a clean answer to a request it cannot parse.

uvicorn (h11 or httptools) refuses a request whose request line or headers are malformed (`Content-Length: abc`)
before the app sees it: it writes a 400 and closes the socket at once. If the client's body is still arriving, the
kernel answers those bytes with a reset (a socket closed with unread data sends RST), and the client often loses the
400 it was sent: it sees "connection reset by peer". Here the 400 is a JSON error in OpenAI's shape, and the close
lingers: the server stops writing (FIN), discards whatever the client still sends for up to LINGER_S seconds, and
closes as soon as the client does. The server itself was never at risk; this is about the client getting its answer.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.auto import AutoHTTPProtocol  # httptools when installed, else h11

LINGER_S = 2.0
MESSAGE = ("the HTTP request could not be parsed: a malformed request line or header (for example a Content-Length "
           "that is not a number of bytes)")


class LingeringHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """AutoHTTPProtocol whose refusal of an unparseable request is a JSON 400 followed by a lingering close."""

    _linger: asyncio.TimerHandle | None = None

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": {"message": MESSAGE, "type": "invalid_request_error", "param": None,
                                     "code": None}}).encode()
        head = (f"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n").encode()
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete:  # the app must not answer this request too
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(head + body)
        if not self.transport.can_write_eof():  # TLS cannot half-close: close as uvicorn does
            self.transport.close()
            return
        self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._linger is None:
            super().data_received(data)
        # else: more of a request already refused; read so that closing sends no reset, and dropped

    def eof_received(self) -> bool | None:
        if self._linger is not None:  # the client is done too: close now
            self.transport.close()
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._linger is not None:  # nothing left to say on this connection
            self.transport.close()
            return
        super().shutdown()
