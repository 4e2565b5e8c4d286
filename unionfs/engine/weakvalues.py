"""WeakValues: a mapping whose values are held weakly (an entry goes when its value does).

The node table keeps three of these per node it makes (the parent's children, by st_ino, by backing
key), so a cold lookup or a readdirplus entry pays for them every time. weakref.WeakValueDictionary
does the same job with three Python frames per store (its KeyedRef's __new__ and __init__, and
__setitem__) and a guard for removals during iteration; here a store is one frame and a C-level ref,
and iteration works on a copy (dict.copy runs no Python code, so no removal can interleave). Only what
the node table uses: get, [], del, in, len, values.
"""

from _weakref import ref  # weakref.ref itself; the weakref module is ~0.5 ms of a mount's start

__all__ = ["WeakValues"]


class _Ref(ref):
    """A weak reference that knows its key (created and initialized in C: no __new__/__init__ here)."""

    __slots__ = ("key",)
    key: object


class WeakValues:
    __slots__ = ("data", "_gone", "__weakref__")

    def __init__(self):
        self.data = {}  # key -> _Ref

        def gone(wr, owner=ref(self)):
            # The value died. Its key may name a newer value by now: drop only this reference. (The
            # mapping itself is held weakly here: no cycle keeps a dead directory's children alive.)
            mapping = owner()
            if mapping is not None and mapping.data.get(wr.key) is wr:
                del mapping.data[wr.key]

        self._gone = gone

    def get(self, key, default=None):
        wr = self.data.get(key)
        if wr is None:
            return default
        value = wr()
        return default if value is None else value

    def __getitem__(self, key):
        value = self.data[key]()
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value) -> None:
        wr = _Ref(value, self._gone)
        wr.key = key
        self.data[key] = wr

    def __delitem__(self, key) -> None:
        del self.data[key]

    def __contains__(self, key) -> bool:
        wr = self.data.get(key)
        return wr is not None and wr() is not None

    def __len__(self) -> int:
        return len(self.data)

    def values(self) -> list:
        return [value for wr in self.data.copy().values() if (value := wr()) is not None]
