"""Ownership as presented through the mount: fuse-overlayfs's uidmapping/gidmapping and squash options.

`uidmapping=HOST:TO:LEN[:HOST2:TO2:LEN2...]` (fuse-overlayfs(1)): an owner HOST+k stored in the layers is
shown as TO+k, and a caller TO+k creates or chowns to HOST+k. IDs outside every range show as the
overflow id 65534, as the kernel does for unmapped IDs; a caller outside every range creates as 65534.
This lets rootless container tools share one layer store across user namespaces without chowning it.
`squash_to_root`, `squash_to_uid=N`, `squash_to_gid=N` show every entry as owned by 0 or by N (the
squash wins over a mapping); what is stored is not squashed.
"""

OVERFLOW_ID = 65534


class IdMapError(ValueError):
    pass


class IdMap:
    # A plain class, not a dataclass: `dataclasses` imports `inspect`, 10 ms of every pyunionfs start.
    __slots__ = ("ranges", "squash")

    def __init__(self, ranges=None, squash=None):
        self.ranges = [] if ranges is None else ranges  # [(host, to, length)]
        self.squash = squash  # None: no squashing; else the id everything shows as

    def __eq__(self, other):
        return isinstance(other, IdMap) and (self.ranges, self.squash) == (other.ranges, other.squash)

    def __repr__(self):
        return f"IdMap(ranges={self.ranges!r}, squash={self.squash!r})"

    @classmethod
    def parse(cls, text: str, what: str) -> "IdMap":
        """'HOST:TO:LEN[:HOST:TO:LEN...]' (fuse-overlayfs also separates ranges with ',', which mount
        options cannot carry, so ':' throughout)."""
        parts = text.replace(",", ":").split(":") if text else []
        if not parts or len(parts) % 3:
            raise IdMapError("%s needs HOST:TO:LEN triples, got %r" % (what, text))
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise IdMapError("%s needs numbers, got %r" % (what, text)) from None
        ranges = [tuple(numbers[i : i + 3]) for i in range(0, len(numbers), 3)]
        if any(n < 0 for n in numbers) or any(length == 0 for _, _, length in ranges):
            raise IdMapError("%s has a negative number or an empty range: %r" % (what, text))
        return cls(ranges=ranges)

    @property
    def identity(self) -> bool:
        return not self.ranges and self.squash is None

    def shown(self, stored: int) -> int:
        """The ID the kernel (and so the user) sees for an ID stored in a layer."""
        if self.squash is not None:
            return self.squash
        if not self.ranges:
            return stored
        for host, to, length in self.ranges:
            if host <= stored < host + length:
                return to + stored - host
        return OVERFLOW_ID

    def stored(self, shown: int) -> int:
        """The ID written to a layer for a caller's (or chown's) ID."""
        if not self.ranges:
            return shown
        for host, to, length in self.ranges:
            if to <= shown < to + length:
                return host + shown - to
        return OVERFLOW_ID
