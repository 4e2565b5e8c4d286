"""WeakValues (the node table's weak maps): a dead value reads as absent, a value drops its own entries
when it dies (as Node.__del__ does), a newer value under the same key survives the death of an older
one, the entries of one value share one reference, and iteration survives deaths."""

import gc

from unionfs.engine.weakvalues import WeakValues, ref


class Obj:
    pass


class Owned:
    """A value that drops its entries when it dies, as a Node does."""

    __slots__ = ("entries", "__weakref__")

    def __init__(self):
        self.entries = []  # (mapping, key)

    def put(self, mapping, key):
        mapping[key] = self
        self.entries.append((mapping, key))

    def __del__(self):
        wr = ref(self)
        for mapping, key in self.entries:
            mapping.discard(key, wr)


def test_a_dead_value_reads_as_absent():
    m = WeakValues()
    a, b = Obj(), Obj()
    m["a"], m["b"] = a, b
    assert m.get("a") is a and m["b"] is b and "a" in m and len(m) == 2
    del a
    assert m.get("a") is None and m.get("a", 7) == 7 and "a" not in m
    assert m.values() == [b]
    del m["b"]
    assert m.get("b") is None


def test_a_value_drops_its_entries_when_it_dies():
    m1, m2 = WeakValues(), WeakValues()
    a, b = Owned(), Owned()
    a.put(m1, "a")
    a.put(m2, 1)
    b.put(m1, "b")
    assert m1.data["a"] is m2.data[1]  # one reference for every entry of a value
    del a
    assert len(m1) == 1 and len(m2) == 0 and m1.get("b") is b


def test_a_value_in_a_garbage_cycle_drops_its_entries():
    # The collector clears the references before the finalizer runs: the entry holds a dead one then.
    class Cyclic(Owned):
        pass

    m = WeakValues()
    keep = Owned()
    keep.put(m, "keep")
    c = Cyclic()
    c.put(m, "c")
    c.me = c
    del c
    gc.collect()
    assert "c" not in m.data and m.get("keep") is keep


def test_a_newer_value_under_the_key_survives_the_older():
    m = WeakValues()
    old, new = Owned(), Owned()
    old.put(m, "k")
    new.put(m, "k")
    del old  # its discard must not remove the newer entry
    assert m.get("k") is new and len(m) == 1


def test_values_while_values_die():
    m = WeakValues()
    objs = [Owned() for _ in range(100)]
    for i in range(100):
        objs[i].put(m, i)
    seen = []
    for v in m.values():
        seen.append(v)
        objs.clear()  # the others die during the iteration; the list holds what was alive
    assert len(seen) == 100
    del seen, v
    assert len(m) == 0
