"""Contracts of the Living Image, stated in prose.

Nothing here runs; the classes in this package promise what these interfaces say, and the
tests hold them to it.
"""

from zope.interface import Attribute, Interface


class IUvmObject(Interface):
    """A prototype: named slots plus delegation to parents.

    Reading a name that is not a slot of the object looks in each object of its ``parent*`` slot,
    depth first and in list order; an object reached twice is searched once, so cycles in
    ``parent*`` end the search instead of looping. A name found nowhere raises AttributeError.

    Assigning a name stores it as a slot in the same transaction; lists and dicts become
    PersistentList / PersistentMapping on the way in, so that later in-place edits are saved too.
    Names beginning with ``_p_`` or ``_v_`` keep their ZODB meaning and never become slots.
    """

    _slots = Attribute("OOBTree from slot name to value (a PersistentMapping in objects not written "
                       "since images kept them so)")

    def clone(deep=False):
        """Return a new object whose own slots are copies of this object's slots.

        Containers are fresh, so editing the clone's lists or dicts never changes the original.
        Parents and other persistent objects are shared, unless ``deep`` is true, in which case
        referenced UvmObjects (never parents) are cloned too.
        """


class IMethod(Interface):
    """Behaviour stored as data.

    A Method holds source text (or, for a primitive, the registry name of kernel code), never
    a live function. The compiled function is a per-process cache that is rebuilt on demand.
    Reinstalling a selector keeps every earlier version: ``earlier_versions()`` gives them, oldest
    first, each written to the image once (the new version points at the one it replaced).
    """

    selector = Attribute("the message name the method answers")
    source = Attribute("Python source of one function whose first parameter is the receiver")
    origin = Attribute("'architect', 'synthesized' or 'primitive'")
    previous = Attribute("the Method this version replaced, or None")
    history = Attribute("earlier versions as records, kept only by images written before ``previous``")

    def earlier_versions():
        """Every earlier version as a plain record, oldest first."""


class IImage(Interface):
    """An opened Living Image.

    Opening never needs a human: a lock left by a dead process is no obstacle, a lock held by a
    live one is an error naming its PID, an image with no schema gets genesis, an older schema
    is migrated, and a newer one is refused before anything is written.
    """

    db = Attribute("the ZODB.DB")
    uri = Attribute("the storage URI it was opened from")

    def close():
        """Close the database; closing twice is harmless."""
