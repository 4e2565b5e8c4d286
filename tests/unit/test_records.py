"""engine/records.py: the named tuples made without collections behave as collections' do."""

import pickle
from collections import namedtuple

import pytest

from unionfs import Caller
from unionfs.engine.layermounts import MountInfo
from unionfs.engine.records import record

Pair = record("Pair", "left right", "Two things.", __name__)
StdPair = namedtuple("StdPair", "left right")


def test_a_record_is_a_tuple_with_named_fields():
    p = Pair(1, right=2)
    assert p == (1, 2) == StdPair(1, 2) and hash(p) == hash((1, 2))
    assert (p.left, p.right, p[0], p[-1]) == (1, 2, 1, 2)
    left, right = p
    assert (left, right) == (1, 2)
    assert repr(p) == "Pair(left=1, right=2)" and Pair.__doc__ == "Two things." and Pair._fields == ("left", "right")
    assert Pair(right=4, left=3) == (3, 4)
    with pytest.raises(AttributeError):
        p.left = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.other = 5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "args,kwargs", [((1,), {}), ((1, 2, 3), {}), ((1,), {"other": 2}), ((1, 2), {"left": 1}), ((), {"left": 1})]
)
def test_wrong_arguments_are_a_type_error(args, kwargs):
    with pytest.raises(TypeError):
        Pair(*args, **kwargs)


def test_records_pickle_as_themselves():
    for value in (Pair(1, b"x"), Caller(0, 5), MountInfo(1, 0, b"/", b"ext4", b"/dev/x", b"rw")):
        back = pickle.loads(pickle.dumps(value))
        assert back == value and type(back) is type(value)


Padded = record("Padded", "a b c", "", __name__, defaults=(2, 3))


def test_the_last_fields_may_have_defaults():
    assert Padded(1) == (1, 2, 3) and Padded(1, c=9) == (1, 2, 9) and Padded(a=0, b=0) == (0, 0, 3)
    assert Padded(1, 5, 6).c == 6
    for args, kwargs in (((), {}), ((1, 2, 3, 4), {}), ((1,), {"a": 1}), ((1,), {"d": 1})):
        with pytest.raises(TypeError):
            Padded(*args, **kwargs)
    with pytest.raises(TypeError):
        record("TooMany", "a", "", __name__, defaults=(1, 2))


def test_the_request_layers_records_read_as_namedtuples_do():
    from unionfs.fuse.nodetable import Entry
    from unionfs.fuse.requests import Context, Opened, SetAttr

    assert Opened(7, True, False) == (7, True, False, 0) and Opened(7, True, False).backing_id == 0
    assert SetAttr() == (None,) * 6 and SetAttr(mode=0o644).mode == 0o644
    assert Context(1, 2) == (1, 2, 0, 0) and Context(1, 2, umask=0o22).umask == 0o22
    e = tuple.__new__(Entry, tuple(range(16)))
    assert (e.node_id, e.node, e.st_ino, e.ino, e.attr_timeout, e.attr_flags) == (0, 0, 2, 2, 15, 0)
    assert pickle.loads(pickle.dumps(e)) == e and type(pickle.loads(pickle.dumps(e))) is Entry
