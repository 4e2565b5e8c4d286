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
