"""The plain-data codec that carries a candidate's results to the checking process."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_codegen._sandbox_codec import MAX_DEPTH, Malformed, NotPlain, decode, encode, from_json

hashable = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.complex_numbers()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4),
    max_leaves=12,
)
plain = st.recursive(
    hashable,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(hashable, inner, max_size=4)
        | st.sets(hashable, max_size=4)
    ),
    max_leaves=30,
)


def same(a: object, b: object) -> bool:
    """Equal, of the same exact types all the way down, NaN equal to NaN, -0.0 not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return same(list(a.items()), list(b.items()))  # in order, NaN keys too
    if isinstance(a, (set, frozenset)):  # NaN members are equal to no other NaN: match them up
        rest = list(b)
        for x in a:
            match = next((i for i, y in enumerate(rest) if same(x, y)), None)
            if match is None:
                return False
            del rest[match]
        return not rest
    return a == b


@given(plain)
def test_plain_values_round_trip_with_their_exact_types(value):
    assert same(decode(encode(value)), value)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_to_plain_data_or_fail_cleanly(data):
    try:
        value = decode(data)
    except Malformed:
        return
    assert same(decode(encode(value)), value)


class AlwaysEqual(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (AlwaysEqual(3), "an int subclass AlwaysEqual"),
        ([1, (2, AlwaysEqual(3))], "at [1][1]"),
        ({"k": iter([])}, "a list_iterator at ['k']"),
        ((x for x in ()), "a generator"),
        (True.__class__.__mro__, "a type at [0]"),
        (10 ** 5000, "too many digits"),
    ],
    ids=["int-subclass", "nested", "iterator", "generator", "types", "huge-int"],
)
def test_anything_else_is_refused_saying_what_and_where(value, says):
    with pytest.raises(NotPlain, match="not plain data|too many digits") as caught:
        encode(value)
    assert says in str(caught.value)


def test_a_value_that_holds_itself_is_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(NotPlain, match="deep"):
        encode(loop)
    deep: list = []
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    assert decode(encode(deep)) == deep


@pytest.mark.parametrize(
    "data",
    [b"", b"[1,2]", b'["x",1]', b'["s",["l"]]', b'["d",1]', b'{"a":1}', b"1 2", b'["b","zz"]', b'["c",1,2]',
     b"\xff", b"[" * 100_000],
)
def test_what_no_encoding_looks_like_is_malformed(data):
    with pytest.raises(Malformed):
        decode(data)


def test_standard_containers_that_compare_as_their_base_type_cross_as_it():
    from collections import Counter, OrderedDict, defaultdict, namedtuple

    point = namedtuple("point", "x y")
    value = [Counter("abca"), OrderedDict(b=1, a=2), defaultdict(list, k=[1]), point(1, 2)]
    crossed = decode(encode(value))
    assert crossed == [{"a": 2, "b": 1, "c": 1}, {"b": 1, "a": 2}, {"k": [1]}, (1, 2)]
    assert [type(v) for v in crossed] == [dict, dict, dict, tuple]


def test_not_plain_names_what_it_refused():
    with pytest.raises(NotPlain) as caught:
        encode({"k": [1, AlwaysEqual(2)]})
    assert caught.value.what == "an int subclass AlwaysEqual at ['k'][1]"


def test_decoded_values_are_fresh_objects_of_the_builtin_types():
    assert type(decode(encode(True))) is bool and decode(encode(None)) is None
    assert decode(b'["d",["t",1,2],["s","a"]]') == {(1, 2): {"a"}}


@given(st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010) | st.sampled_from("a\U0001F600"), max_size=8))
def test_strings_with_lone_surrogates_cross_unchanged(text):
    assert decode(encode(text)) == text


def test_a_high_and_a_low_surrogate_do_not_become_another_character():
    # JSON's escapes of the two would decode as one character (U+1F600): a forged equality
    two = "\ud83d\ude00"
    assert decode(encode(two)) == two and len(decode(encode([two]))[0]) == 2
    assert decode(encode("\U0001F600")) == "\U0001F600"


def test_nans_in_a_set_stay_apart():
    nans = {float("nan"), float("nan")}
    assert len(decode(encode(nans))) == 2
    assert len(from_json(json.loads(encode(nans)))) == 2  # as a message parsed whole carries it


def test_a_json_object_inside_a_parsed_message_is_malformed():
    with pytest.raises(Malformed):
        from_json(json.loads('["l",{"a":1}]'))


def test_keys_that_share_a_hash_are_charged_for_their_size():
    # (0,) * 400 + (k * (2**61 - 1),) all hash alike and differ only in their last element: each
    # comparison while building the set walks the whole tuple. Counted by keys alone this set
    # (1,500 keys) is within budget; it would take seconds to build.
    keys = {(0,) * 400 + (k * (2**61 - 1),) for k in range(1, 1501)}
    assert len({hash(k) for k in keys}) == 1
    with pytest.raises(Malformed, match="share hashes"):
        decode(encode(keys))
    powers = {2**i for i in range(4000)}  # honest: hashes repeat every 61 powers
    assert decode(encode(powers)) == powers


def test_measuring_keys_is_paid_from_the_budget():
    # A long tuple inside frozensets nested 97 deep, each beside an int of its hash: every level
    # shares a hash, and measuring its keys walks the tuple again (a 100 KB message: 2.2 s of
    # CPU to decode with the walk uncharged, refused in 0.27 s charged, measured here).
    value: object = (0,) * 50_000
    for _ in range(97):
        value = frozenset({value, hash(value)})
    with pytest.raises(Malformed, match="share hashes"):
        decode(encode(value))


def test_long_strings_that_share_a_hash_are_charged_for_their_length():
    text = "x" * 4096
    keys = {(text, k * (2**61 - 1)) for k in range(1, 1001)}
    assert len({hash(k) for k in keys}) == 1
    with pytest.raises(Malformed, match="share hashes"):
        decode(encode(keys))
