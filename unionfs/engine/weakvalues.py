"""WeakValues: a mapping whose values are held weakly; the value drops its own entries when it dies.

The node table keeps three of these per node it makes (the parent's children, by st_ino, by backing
key), so a cold lookup or a readdirplus entry pays for them every time. Each entry holds the value's
one plain weak reference: `ref(value)` without a callback is the same object however often it is
made, so the three entries of a node share it (weakref.WeakValueDictionary makes a reference with a
callback per entry, ~90 bytes each, and three Python frames per store). An entry whose value died
reads as absent; the value removes its entries itself when it goes (`Node.__del__` calls `discard`).
Iteration works on a copy. Only what the node table uses: get, [], del, in, len, values, discard.
"""

from _weakref import ref  # weakref.ref itself; the weakref module is ~0.5 ms of a mount's start

__all__ = ["WeakValues", "ref"]


class WeakValues:
    __slots__ = ("data",)

    def __init__(self):
        self.data = {}  # key -> the value's plain weak reference

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
        self.data[key] = ref(value)

    def __delitem__(self, key) -> None:
        del self.data[key]

    def __contains__(self, key) -> bool:
        wr = self.data.get(key)
        return wr is not None and wr() is not None

    def __len__(self) -> int:
        return len(self.data)

    def values(self) -> list:
        return [value for wr in self.data.copy().values() if (value := wr()) is not None]

    def discard(self, key, wr) -> None:
        """Drop the entry of *key* if it holds *wr* (a dying value's reference) or a dead one. The key
        may name a newer value by now: that entry stays. (In a garbage cycle the collector clears the
        references before the finalizers run, so a dying value's own reads as dead there.)"""
        held = self.data.get(key)
        if held is not None and (held is wr or held() is None):
            del self.data[key]
