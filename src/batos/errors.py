"""The one base of BatOS's own failures: each kind carries the wire error code a client sees."""

from __future__ import annotations


class BatosError(Exception):
    """A failure whose meaning BatOS knows; ``code`` is the error code of the reply."""

    code = "internal"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class Protected(BatosError):
    """A write to a kernel object, or to a slot only the kernel may change; nothing was written."""

    code = "protected"


class TooLarge(BatosError):
    """A value, source, reply or write set over its configured limit; nothing was written."""

    code = "too_large"


class RateLimited(BatosError):
    """Too many of something started too quickly (cycles per client per minute)."""

    code = "rate_limited"


class Forbidden(BatosError):
    """The client's role may not do this (an admin's op asked by a user); nothing was done."""

    code = "forbidden"


class NotFound(BatosError):
    """No such object, slot, cycle, model or expert."""

    code = "not_found"


class BadRequest(BatosError):
    """A request whose fields make no sense together; nothing was done."""

    code = "bad_request"
