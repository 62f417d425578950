"""The Synaptic Bridge: a ZeroMQ ROUTER socket speaking the protocol in batos.kernel.protocol.

Each incoming message is ``envelope + [payload]``: every frame but the last is the envelope (the
peer's identity and, from REQ peers, the empty delimiter) and goes back unchanged with the reply.
Replies to peers that have gone away are dropped and logged (ROUTER_MANDATORY makes that visible).
With a clients file, only listed CURVE keys connect (see :mod:`batos.kernel.identities`), and each
request carries its sender's principal.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from ipaddress import ip_address
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import zmq

from batos.kernel import protocol
from batos.kernel.identities import ZAP_DOMAIN, Gate
from batos.kernel.protocol import Code, ProtocolError, Request
from batos.principals import OWNER, Principal

log = logging.getLogger(__name__)

RECEIVE_BURST = 64
LARGE_BURST_BYTES = 1024**2

Emit = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Request, Emit], Awaitable[dict[str, Any]]]


class BridgeError(Exception):
    """The bridge cannot start as configured."""


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints bound to a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(f"//{rest}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


class Bridge:
    """Receives requests, runs ``handler`` for each concurrently, sends back the replies."""

    def __init__(
        self,
        endpoint: str,
        handler: Handler,
        max_message_size: int = protocol.MAX_MESSAGE_SIZE,
        max_in_flight: int = 1024,
        curve_secret_key: str | None = None,
        max_reply_bytes: int = protocol.MAX_MESSAGE_SIZE,
        principals: dict[str, Principal] | None = None,
    ):
        self.endpoint = endpoint
        self.max_reply_bytes = max_reply_bytes
        self.handler = handler
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        self.curve_secret_key = curve_secret_key
        self.principals = principals
        self.gate: Gate | None = None
        self.context: zmq.Context | None = None
        self.socket: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.in_flight: set[asyncio.Task] = set()
        self.dropped_replies = 0
        self.bound_endpoint: str | None = None

    def bind(self) -> None:
        if not is_local_endpoint(self.endpoint) and not self.curve_secret_key:
            raise BridgeError(
                f"{self.endpoint} is not a loopback address: binding it needs CURVE encryption "
                f"(set BATOS_CURVE_SECRET_KEY; `batos keys` makes a key pair)"
            )
        if self.principals is not None and not self.curve_secret_key:
            raise BridgeError("BATOS_CLIENTS admits clients by their CURVE keys: the UVM needs its own "
                              "(set BATOS_CURVE_SECRET_KEY; `batos keys` makes a key pair)")
        self.context = zmq.Context()
        if self.principals is not None:
            self.gate = Gate(self.context, self.principals)
            self.gate.start()
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        sock.setsockopt(zmq.LINGER, 1000)
        if self.curve_secret_key:
            sock.curve_server = True
            sock.curve_secretkey = self.curve_secret_key.encode()
            sock.zap_domain = ZAP_DOMAIN.encode()
        self.socket = sock
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            raise BridgeError(f"cannot bind {self.endpoint}: {exc}") from exc
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    async def serve(self) -> None:
        """Receive until cancelled.

        The socket is read from the event loop's reader callback, draining every queued message
        at once. ZeroMQ's descriptor is edge-triggered, so after any send the queue is looked at
        again: a send can consume the edge that announced new input.
        """
        assert self.socket is not None, "bind() first"
        self._loop = asyncio.get_running_loop()
        fd = self.socket.getsockopt(zmq.FD)
        self._loop.add_reader(fd, self._drain)
        self._drain()
        try:
            await self._loop.create_future()
        finally:
            self._loop.remove_reader(fd)
            self._loop = None

    def _drain(self) -> None:
        sock = self.socket
        received = 0
        for _ in range(RECEIVE_BURST):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            if self.gate is None:
                parts = sock.recv_multipart(zmq.NOBLOCK)
                self._accept(parts, OWNER)
            else:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                principal = self.gate.principal_of(frames[-1])
                parts = [frame.bytes for frame in frames]
                if principal is not None:  # ZAP admitted the connection, so this cannot fail; if it did, say nothing
                    self._accept(parts, principal)
            received += len(parts[-1])
            if received > LARGE_BURST_BYTES:
                break  # a large message decoded: let other clients' replies go out before the next
        self._loop.call_soon(self._drain)  # let other callbacks run before reading on

    def _accept(self, parts: list[bytes], principal: Principal) -> None:
        if len(parts) > protocol.MAX_FRAMES:
            self._send(parts[:1], protocol.error_reply(
                None, Code.BAD_REQUEST, f"too many frames ({len(parts)}); send one payload frame"))
            return
        envelope, payload = parts[:-1], parts[-1]
        try:
            peer = principal.peer if self.gate else (envelope[0] if envelope else b"")
            request = protocol.decode(payload, peer=peer, principal=principal)
        except ProtocolError as exc:
            self._send(envelope, protocol.error_reply(exc.request_id, exc.code, exc.message))
            return
        if len(self.in_flight) >= self.max_in_flight:
            self._send(envelope, protocol.error_reply(request.id, Code.BUSY, "too many requests in flight; retry shortly"))
            return
        task = asyncio.ensure_future(self._respond(envelope, request))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _respond(self, envelope: list[bytes], request: Request) -> None:
        async def emit(event: dict[str, Any]) -> None:
            self._send(envelope, protocol.event_frame(request.id, event))

        self._send(envelope, await self.handler(request, emit))

    def _send(self, envelope: list[bytes], message: dict[str, Any]) -> None:
        try:
            payload = protocol.encode(message)
        except (TypeError, ValueError) as exc:
            log.error("reply to %s could not be encoded: %s", message.get("id"), exc)
            payload = protocol.encode(protocol.error_reply(
                message.get("id"), Code.INTERNAL, f"the result could not be encoded: {exc}"))
        if len(payload) > self.max_reply_bytes:
            log.warning("reply %s of %d bytes replaced: over the reply limit", message.get("id"), len(payload))
            payload = protocol.encode(protocol.error_reply(
                message.get("id"), Code.TOO_LARGE,
                f"the reply would be {len(payload)} bytes; replies are limited to {self.max_reply_bytes} (BATOS_MAX_REPLY_BYTES)"))
        try:
            self.socket.send_multipart(envelope + [payload], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self.dropped_replies += 1
                log.warning("reply %s dropped: its peer has disconnected", message.get("id"))
            elif exc.errno == errno.EAGAIN:
                self.dropped_replies += 1
                log.warning("reply %s dropped: its peer is not reading (high-water mark reached)", message.get("id"))
            else:
                raise
        if self._loop is not None and self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._loop.call_soon(self._drain)

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for in-flight requests; return how many were still running."""
        pending = set(self.in_flight)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        return len(pending)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        if self.gate is not None:
            self.gate.stop()
        if self.context is not None:
            self.context.term()
