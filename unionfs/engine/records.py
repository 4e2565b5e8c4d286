"""record(): a named tuple type without importing collections.

collections (with operator, keyword and reprlib) is ~1.5 ms of a mount program's ~20 ms start, and
the start needs only two small named tuples (Caller, MountInfo). A record is a tuple: built from
positional or keyword arguments, read by field name or index, compared, hashed, unpacked and pickled
as one. Field reads go through a property (slower than collections' C getter; fine off the hot paths).
"""

__all__ = ["record"]


def record(typename: str, field_names: str, doc: str = "", module: str = __name__) -> type:
    """A tuple subclass named *typename* with the space-separated *field_names*, defined in *module*
    (pass the caller's __name__: pickle finds the type there)."""
    fields = tuple(field_names.split())

    def __new__(cls, *args, **kwargs):
        if kwargs:
            try:
                args += tuple(kwargs.pop(name) for name in fields[len(args) :])
            except KeyError as exc:
                raise TypeError(f"{typename}() missing argument {exc}") from None
            if kwargs:
                raise TypeError(f"{typename}() got unexpected arguments {sorted(kwargs)}")
        if len(args) != len(fields):
            raise TypeError(f"{typename}() takes {len(fields)} arguments ({len(args)} given)")
        return tuple.__new__(cls, args)

    def __getnewargs__(self):  # pickle: the fields, as __new__ takes them
        return tuple(self)

    def __repr__(self):
        return f"{typename}(" + ", ".join(f"{name}={value!r}" for name, value in zip(fields, self)) + ")"

    namespace = {
        "__slots__": (),
        "__new__": __new__,
        "__repr__": __repr__,
        "__getnewargs__": __getnewargs__,
        "__doc__": doc,
        "__module__": module,
        "_fields": fields,
    }
    for index, name in enumerate(fields):
        namespace[name] = property(lambda self, index=index: self[index], doc=f"item {index}")
    return type(typename, (tuple,), namespace)
