"""record(): a named tuple type without importing collections.

collections (with operator, keyword and reprlib) is ~1.5 ms of a mount program's ~20 ms start, and of
the daemon's time from its fork to its first answer. A record is a tuple: built from positional or
keyword arguments (the last fields may have defaults), read by field name or index, compared, hashed,
unpacked and pickled as one. Field reads go through CPython's own C getter for named tuples
(`_collections._tuplegetter`, a built-in module: nothing to load), as fast as collections'; elsewhere
through a property over `_operator.itemgetter`.
"""

__all__ = ["record"]

try:
    from _collections import _tuplegetter  # type: ignore[import-not-found]
except ImportError:  # not CPython
    from _operator import itemgetter

    def _tuplegetter(index, doc):
        return property(itemgetter(index), doc=doc)


def record(typename: str, field_names: str, doc: str = "", module: str = __name__, defaults: tuple = ()) -> type:
    """A tuple subclass named *typename* with the space-separated *field_names*, defined in *module*
    (pass the caller's __name__: pickle finds the type there); *defaults* are those of the last fields."""
    fields = tuple(field_names.split())
    if len(defaults) > len(fields):
        raise TypeError("more defaults than fields")
    required = len(fields) - len(defaults)

    def __new__(cls, *args, **kwargs):
        if kwargs or len(args) != len(fields):
            given = len(args)
            if given > len(fields):
                raise TypeError(f"{typename}() takes {len(fields)} arguments ({given} given)")
            rest = []
            for position in range(given, len(fields)):
                name = fields[position]
                if name in kwargs:
                    rest.append(kwargs.pop(name))
                elif position >= required:
                    rest.append(defaults[position - required])
                else:
                    raise TypeError(f"{typename}() missing argument {name!r}")
            if kwargs:
                raise TypeError(f"{typename}() got unexpected arguments {sorted(kwargs)}")
            args += tuple(rest)
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
        namespace[name] = _tuplegetter(index, f"item {index}")
    return type(typename, (tuple,), namespace)
