"""Frames between the UVM and a sandbox worker: a 4-byte length, then one msgpack map.

Values cross as plain data. Two msgpack extension types carry what plain data cannot: a
reference to an object, written as the small integer *handle* the UVM issued for it in the
current call (never an oid: a worker can name only what it was given), and an integer too big for
64 bits, written in decimal.
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any

import ormsgpack

HEADER = struct.Struct(">I")
REF = 1
BIG_INT = 2
MAX_BIG_INT_DIGITS = 4000
PACK_OPTIONS = ormsgpack.OPT_NON_STR_KEYS | ormsgpack.OPT_PASSTHROUGH_BIG_INT


class ChannelError(Exception):
    """The other side is gone, too slow, or said something that is not a frame."""


class ChannelClosed(ChannelError):
    pass


class ChannelTimeout(ChannelError):
    pass


class FrameTooLarge(ChannelError):
    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        super().__init__(f"a frame of {size} bytes is over the limit of {limit}")


class Ref:
    """A reference to the object with ``handle`` in the current call's handle table."""

    __slots__ = ("_handle",)

    def __init__(self, handle: int):
        object.__setattr__(self, "_handle", handle)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other._handle == self._handle

    def __hash__(self) -> int:
        return hash(("ref", self._handle))

    def __repr__(self) -> str:
        return f"<object #{self._handle}>"


def ext_of_ref(handle: int) -> ormsgpack.Ext:
    return ormsgpack.Ext(REF, HEADER.pack(handle))


def ext_of_big_int(value: int) -> ormsgpack.Ext:
    return ormsgpack.Ext(BIG_INT, str(value).encode())


def decode_ext(tag: int, data: bytes) -> Any:
    if tag == REF and len(data) == HEADER.size:
        return Ref(HEADER.unpack(data)[0])
    if tag == BIG_INT and 0 < len(data) <= MAX_BIG_INT_DIGITS + 1:
        return int(data)
    raise ValueError(f"unknown extension type {tag}")


def pack(message: Any) -> bytes:
    """``message`` as msgpack; Ref values become the REF extension."""
    return ormsgpack.packb(message, default=_default, option=PACK_OPTIONS)


def unpack(data: bytes) -> Any:
    return ormsgpack.unpackb(data, ext_hook=decode_ext, option=ormsgpack.OPT_NON_STR_KEYS)


def _default(value: Any) -> Any:
    if isinstance(value, Ref):
        return ext_of_ref(value._handle)
    if isinstance(value, int) and not isinstance(value, bool):
        if len(str(value)) > MAX_BIG_INT_DIGITS:
            raise ValueError(f"an integer of more than {MAX_BIG_INT_DIGITS} digits cannot cross the sandbox channel")
        return ext_of_big_int(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, bytearray):
        return bytes(value)
    raise TypeError(f"a {type(value).__name__} cannot cross the sandbox channel")


class Channel:
    """Frames over a pair of pipe file descriptors."""

    def __init__(self, read_fd: int, write_fd: int, max_frame: int):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.max_frame = max_frame

    def send_bytes(self, payload: bytes) -> None:
        data = memoryview(HEADER.pack(len(payload)) + payload)
        while data:
            written = os.write(self.write_fd, data)
            data = data[written:]

    def send(self, message: Any) -> None:
        self.send_bytes(pack(message))

    def receive(self, deadline: float | None = None) -> Any:
        """The next frame's message; ChannelTimeout once ``deadline`` (monotonic) has passed."""
        size = HEADER.unpack(self._read_exactly(HEADER.size, deadline))[0]
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        payload = self._read_exactly(size, deadline)
        try:
            return unpack(payload)
        except (ValueError, TypeError, ormsgpack.MsgpackDecodeError) as exc:
            raise ChannelError(f"a frame that does not decode: {exc}") from None

    def _read_exactly(self, count: int, deadline: float | None) -> bytes:
        parts, left = [], count
        while left:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.read_fd], [], [], remaining)[0]:
                    raise ChannelTimeout("no answer in time")
            chunk = os.read(self.read_fd, min(left, 1 << 20))
            if not chunk:
                raise ChannelClosed("the other side closed the channel")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)
