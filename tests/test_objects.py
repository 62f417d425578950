"""The object model: delegation, the Persistence Covenant, clone, Method history, primitives."""

from __future__ import annotations

import pickle

import pytest
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

from batos.image import Method, UvmObject, open_image
from batos.sandbox import run_method
from batos.sandbox.verify import default_pool
from batos.image.objects import MethodSourceError, SandboxOnly, delegation_chain
from batos.image.storage import normalize_uri

from conftest import Session, opened_root


def test_delegation_is_depth_first_in_parent_order():
    top = UvmObject(name="top", colour="red", size="top-size")
    left = UvmObject(parents=[top], name="left", shape="left-shape")
    right = UvmObject(name="right", shape="right-shape", colour="blue", size="right-size")
    child = UvmObject(parents=[left, right], name="child")
    # left's chain (left, then top) is searched completely before right.
    assert child.shape == "left-shape"
    assert child.colour == "red"
    assert child.size == "top-size"
    assert [o.name for o in delegation_chain(child)] == ["child", "left", "top", "right"]


def test_own_slot_shadows_parent():
    parent = UvmObject(colour="red")
    child = UvmObject(parents=[parent], colour="green")
    assert child.colour == "green"


def test_cycle_in_parents_ends_lookup():
    a = UvmObject(name="a")
    b = UvmObject(parents=[a], name="b")
    a.__setattr__("parent*", [b])
    assert [o.name for o in delegation_chain(a)] == ["a", "b"]
    with pytest.raises(AttributeError):
        a.nowhere
    assert b.name == "b"


def test_self_parent_cycle():
    a = UvmObject(name="a")
    setattr(a, "parent*", [a])
    with pytest.raises(AttributeError):
        a.missing


def test_assigned_lists_and_dicts_become_persistent():
    obj = UvmObject()
    obj.items = [1, [2, 3], {"k": [4]}]
    obj.table = {"a": {"b": 1}}
    assert isinstance(obj._slots["items"], PersistentList)
    assert isinstance(obj._slots["items"][1], PersistentList)
    assert isinstance(obj._slots["items"][2], PersistentMapping)
    assert isinstance(obj._slots["table"]["a"], PersistentMapping)


def test_slot_change_survives_close_and_reopen(image_path):
    with opened_root(image_path) as root:
        root["genesis_obj"].counter = 41
        root["genesis_obj"].counter = root["genesis_obj"].counter + 1
    with opened_root(image_path) as root:
        assert root["genesis_obj"].counter == 42


def test_in_place_edit_of_list_slot_survives_reopen(image_path):
    img = open_image(str(image_path))
    session = Session(img.db)
    with session as root:
        root["genesis_obj"].log = []
    with session as root:
        root["genesis_obj"].log.append("first")  # in place: no assignment to the slot
        root["genesis_obj"].log[0] += "!"
    session.close()
    img.close()
    with opened_root(image_path) as root:
        assert list(root["genesis_obj"].log) == ["first!"]


def test_slot_deletion_survives_reopen(image_path):
    img = open_image(str(image_path))
    session = Session(img.db)
    with session as root:
        root["genesis_obj"].doomed = 1
    with session as root:
        del root["genesis_obj"].doomed
        with pytest.raises(AttributeError):
            del root["genesis_obj"].never_there
    session.close()
    img.close()
    with opened_root(image_path) as root:
        assert "doomed" not in root["genesis_obj"]._slots


def test_clone_is_independent_but_shares_parents_and_references():
    parent = UvmObject(name="proto")
    friend = UvmObject(name="friend")
    original = UvmObject(parents=[parent], items=[1, 2], table={"a": [1]}, friend=friend)
    copy = original.clone()
    copy.items.append(3)
    copy.table["a"].append(2)
    copy.name = "copy"
    assert list(original.items) == [1, 2]
    assert list(original.table["a"]) == [1]
    assert original.name == "proto"  # inherited, untouched by the clone's own slot
    assert copy.friend is friend
    assert list(copy._slots["parent*"]) == [parent]
    assert copy._slots["parent*"] is not original._slots["parent*"]
    assert copy is not original


def test_deep_clone_copies_referenced_objects_but_not_parents():
    parent = UvmObject(name="proto")
    friend = UvmObject(name="friend")
    original = UvmObject(parents=[parent], friend=friend)
    copy = original.clone(deep=True)
    assert copy.friend is not friend and copy.friend.name == "friend"
    assert copy._slots["parent*"][0] is parent


def test_method_history_and_versions():
    first = Method("area", "def area(self):\n    return 1\n")
    second = first.successor("def area(self):\n    return 2\n")
    third = second.successor("def area(self):\n    return 3\n", origin="synthesized", cycle="c1")
    assert [h["source"].strip()[-1] for h in third.earlier_versions()] == ["1", "2"]
    assert [h["version"] for h in third.earlier_versions()] == [1, 2]
    assert third.version == 3 and third.origin == "synthesized" and third.cycle == "c1"
    assert first.version == 1 and first.earlier_versions() == []


def test_a_method_from_an_older_image_keeps_its_history_under_new_versions():
    """Images before version chains kept earlier versions as records in ``history``."""
    old = Method("area", "def area(self):\n    return 3\n", history=[
        {"version": 1, "source": "def area(self):\n    return 1\n", "origin": "architect"},
        {"version": 2, "source": "def area(self):\n    return 2\n", "origin": "architect"}])
    del old.number  # as such an image stored it
    newer = old.successor("def area(self):\n    return 4\n")
    assert old.version == 3 and newer.version == 4
    assert [h["version"] for h in newer.earlier_versions()] == [1, 2, 3]


def test_method_source_must_be_one_function_of_the_selector():
    with pytest.raises(MethodSourceError):
        Method("area", "def volume(self):\n    return 1\n")
    with pytest.raises(MethodSourceError):
        Method("area", "x = 1\ndef area(self):\n    return 1\n")
    with pytest.raises(MethodSourceError):
        Method("area", "def area(:\n")
    with pytest.raises(MethodSourceError):
        Method("area", "def area():\n    return 1\n")


def test_stored_source_never_runs_in_process_only_in_the_sandbox(image_path):
    with opened_root(image_path) as root:
        proto = root["genesis_obj"]
        proto.double = Method("double", "def double(self, x):\n    return x * self.factor\n")
        child = proto.clone()
        child.factor = 3
        root["child"] = child
        with pytest.raises(SandboxOnly):
            child.double(5)
        method = proto._slots["double"]
        assert run_method(default_pool(), "double", method.source, child, [5], {}, 10.0) == 15
        assert child.oid() is None or child.oid().startswith("0x")  # primitives still run here
        state = method.__getstate__()
        assert not any(key.startswith("_v_") for key in state)


def test_primitives_are_stored_by_name_and_the_image_pickles(image_path):
    with opened_root(image_path) as root:
        traits = root["traits_obj"]
        clone = traits._slots["clone"]
        assert clone.origin == "primitive" and clone.primitive == "clone"
        assert "function" not in pickle.dumps(clone.__getstate__()).decode("latin-1")
        made = root["genesis_obj"].clone()
        assert made.name == "genesis"
        assert root["genesis_obj"].describe()["name"] == "genesis"


def test_uri_normalization():
    assert normalize_uri("data/x.fs").uri == "file://data/x.fs?blobstorage_dir=data%2Fx.fs.blob"
    assert normalize_uri("file:///a/b.fs").blob_dir == "/a/b.fs.blob"
    assert normalize_uri("file:///a/b.fs?blobstorage_dir=/c").blob_dir == "/c"
    assert normalize_uri("memory://").file_path is None


def test_a_damaged_parent_slot_does_not_break_lookup():
    obj = UvmObject(own=1)
    obj._slots["parent*"] = 7  # what an attack left in an image before parent* was checked
    assert obj.own == 1
    assert list(delegation_chain(obj)) == [obj]


def test_a_slot_write_commits_one_record(image_path):
    """The slots mapping records its own change; the object's record does not change with it."""
    with opened_root(image_path) as root:
        root["counter"] = UvmObject(count=0)
    img = open_image(str(image_path))
    try:
        session = Session(img.db)
        with session as root:
            root["counter"].count = 1
        last = img.db.lastTransaction()
        records = [r for t in img.db.storage.iterator(last, last) for r in t]
        assert len(records) == 1
        with session as root:
            assert root["counter"].count == 1
        session.close()
    finally:
        img.close()
