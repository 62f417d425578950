"""Who is asking: the principals a UVM admits, and the gate that admits only them.

Without a clients file there is one principal, the owner, and every client is it (an admin): the
UVM is as open as its endpoint. With ``BATOS_CLIENTS=FILE`` (lines ``PUBLIC_KEY ROLE NAME``; ROLE
``admin`` or ``user``; ``# `` starts a comment line, and may follow the three words) every connection, loopback included, must present
a listed CURVE key, checked through ZeroMQ's ZAP before any message is read; each message then
carries its sender's key, and limits, quotas and ownership key on it.
"""

from __future__ import annotations

import logging
import os

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from batos.principals import OWNER, ROLES, Principal

__all__ = ["OWNER", "ROLES", "ClientsFileError", "Gate", "Principal", "read_clients"]

log = logging.getLogger(__name__)

ZAP_DOMAIN = "batos"


class ClientsFileError(ValueError):
    """The clients file cannot be used; the message names the line."""


def read_clients(path: str | os.PathLike) -> dict[str, Principal]:
    """The principals a clients file lists, by key."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise ClientsFileError(f"cannot read the clients file {path}: {exc.strerror}") from None
    principals: dict[str, Principal] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0] == "#" or line.lstrip().startswith("# "):
            continue  # a comment: "# " at the start (z85 keys may themselves contain '#')
        if len(words) > 3 and words[3].startswith("#"):
            words = words[:3]
        where = f"{path}, line {number}"
        if len(words) != 3:
            raise ClientsFileError(f"{where}: expected 'PUBLIC_KEY ROLE NAME', found {len(words)} words")
        key, role, name = words
        if role not in ROLES:
            raise ClientsFileError(f"{where}: the role must be admin or user, not {role!r}")
        if not is_public_key(key):
            raise ClientsFileError(f"{where}: {key[:12]}... is not a CURVE public key (40 z85 characters; "
                                   "`batos keys --client` makes one)")
        if key in principals:
            raise ClientsFileError(f"{where}: the key is listed twice")
        principals[key] = Principal(key, name, role)
    if not principals:
        raise ClientsFileError(f"{path} lists no client: nobody could connect")
    return principals


def is_public_key(text: str) -> bool:
    if len(text) != 40:
        return False
    try:
        return len(z85.decode(text.encode("ascii"))) == 32
    except (ValueError, KeyError, UnicodeEncodeError):
        return False


class Gate:
    """ZAP for a context: admits CURVE clients whose key ``principals`` lists, and tags each of
    their messages with that key (the frame property ``User-Id``)."""

    def __init__(self, context: zmq.Context, principals: dict[str, Principal]):
        self.principals = principals
        self.refused = 0
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger("batos.kernel.zap"))

    def start(self) -> None:
        self._authenticator.start()
        self._authenticator.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question: may the client with this z85 key connect?"""
        admitted = key.decode("ascii", "replace") in self.principals
        if not admitted:
            self.refused += 1
            log.warning("a connection with an unlisted key was refused")
        return admitted

    def principal_of(self, frame: zmq.Frame) -> Principal | None:
        """The principal whose connection ``frame`` came in on."""
        try:
            key = frame.get("User-Id")
        except zmq.ZMQError:
            return None
        return self.principals.get(key)

    def stop(self) -> None:
        self._authenticator.stop()
