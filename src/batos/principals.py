"""Who asks: a principal is one identity the UVM knows, with a role.

Every layer may ask who a request is for (to keep a client's conversations, documents and uploads
its own); only the kernel decides who a connection is (:mod:`batos.kernel.identities`).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("admin", "user")


@dataclass(frozen=True)
class Principal:
    """One identity: its CURVE public key (z85), the name it was listed under, and its role."""

    key: str
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def peer(self) -> bytes:
        """The peer identity this principal's requests carry when the UVM has identities (what
        rate limits and a cycle's ``opened_by``, hex-encoded, name)."""
        return self.key.encode()

    def may_see(self, owner: str | None) -> bool:
        """Whether something owned by ``owner`` (a key; None: the single owner of an image without
        identities) is this principal's to see and change."""
        return self.is_admin or (owner or OWNER.key) == self.key


OWNER = Principal("owner", "owner", "admin")  # every client, when the UVM has no clients file
