"""WeakValues (the node table's weak maps): entries go with their values, a newer value under the same
key survives the death of an older one, iteration survives deaths, and a dead mapping leaves no cycle."""

import gc
import weakref

from unionfs.engine.weakvalues import WeakValues


class Obj:
    pass


def test_entries_go_with_their_values():
    m = WeakValues()
    a, b = Obj(), Obj()
    m["a"], m["b"] = a, b
    assert m.get("a") is a and m["b"] is b and "a" in m and len(m) == 2
    del a
    assert m.get("a") is None and m.get("a", 7) == 7 and "a" not in m and len(m) == 1
    assert m.values() == [b]
    del m["b"]
    assert len(m) == 0 and m.get("b") is None


def test_a_newer_value_under_the_key_survives_the_older():
    m = WeakValues()
    old, new = Obj(), Obj()
    m["k"] = old
    m["k"] = new
    del old  # its callback must not remove the newer entry
    assert m.get("k") is new and len(m) == 1


def test_values_while_values_die():
    m = WeakValues()
    objs = [Obj() for _ in range(100)]
    for i in range(100):
        m[i] = objs[i]
    seen = []
    for v in m.values():
        seen.append(v)
        objs.clear()  # every other value dies during the iteration; the list holds what was alive
    assert len(seen) == 100
    del seen, v
    assert len(m) == 0


def test_a_dead_mapping_is_freed_without_the_cycle_collector():
    gc.disable()
    try:
        m = WeakValues()
        keep = Obj()
        m["x"] = keep
        gone = weakref.ref(m)
        del m
        assert gone() is None  # freed by reference counting alone: no cycle through the callbacks
        del keep  # the callback of a dead mapping's reference does nothing
    finally:
        gc.enable()
