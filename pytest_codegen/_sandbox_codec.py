"""Plain data across the sandbox's process boundary: what a candidate's function returns (and
the arguments a test passes it), as bytes that rebuild only plain values on the other side.

Plain values are None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets
and frozensets of them, of exactly those types: a subclass (an int with its own `__eq__`), a
generator or any other object is refused by `encode` with a message that says what and where.
Four standard-library containers whose `==` against plain values is their base type's cross as
that type: `collections.Counter`, `OrderedDict` and `defaultdict` as a dict, a named tuple as a
tuple (MBPP's reference solutions return them).
`decode` builds fresh objects of those types only, so nothing the sending process made (an
object that says it equals everything, a `__hash__` or `__repr__` of its own) reaches the
receiver, whatever bytes it sends: malformed input raises `Malformed`.

The bytes are JSON text (decoded by the `_json` C scanner, made for untrusted input), every
container an array whose first element names its type: `["l", ...]` a list, `"t"` a tuple,
`"s"` a set, `"f"` a frozenset, `"d"` a dict (keys and values alternating), `"b"` bytes (hex),
`"c"` a complex (real, imaginary), `"u"` a string with lone surrogates (its UTF-32 code units
in hex: JSON's escapes would join a high and a low one into another character). Floats are
written with `repr` (exact), NaN and the infinities as JSON's usual extensions. Imports nothing
but `_json`: the sandbox's forker loads it by name (see `_sandbox_bootstrap`), before any
candidate code runs.
"""

from __future__ import annotations

import _json
import collections
import typing

MAX_DEPTH = 100  # containers within containers
MAX_BYTES = 16 << 20
# A set's or dict's keys are distinct, and distinct keys that share a hash make building it
# quadratic (the integers k * (2**61 - 1) all hash to 0), each step comparing two keys, which
# costs about their size (tuples with one hash that differ in their last element). Building
# costs about the sum, over hash values, of the square of how many keys share each times the
# size of the largest of them (`_size`; a few ns a unit): past this budget, summed over every
# set and dict of one value (about 0.1 s), the value is refused unbuilt. Measuring a key's
# size is paid from the same budget (`SIZE_STEP` a part it walks). Honest values stay far below
# it ({2**i for i in range(4000)}, whose hashes repeat every 61 powers: about 4 million).
HASH_WORK_BUDGET = 20_000_000
SIZE_STEP = 30

PLAIN = "None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets and frozensets of them"
_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_SEQUENCE_TAGS: dict[type, str] = {list: '["l"', tuple: '["t"', set: '["s"', frozenset: '["f"'}
_AS_DICT = (collections.Counter, collections.OrderedDict, collections.defaultdict)


class NotPlain(TypeError):
    """The value holds something other than plain data (or too much of it); `what` names it
    ("a generator at [2]")."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} {reason}")
        self.what = what


class Malformed(ValueError):
    """The bytes are not an encoding of plain data."""


def encode(value: object) -> bytes:
    """The encoding of `value`; `NotPlain` says what in it is not plain data, and where."""
    parts: list[str] = []
    try:
        _encode(value, parts, 0)
    except _Refused as refused:
        where = " at " + "".join(reversed(refused.path)).strip() if refused.path else ""
        raise NotPlain(refused.what + where, refused.reason) from None
    data = "".join(parts).encode("ascii")
    if len(data) > MAX_BYTES:
        raise NotPlain("the value", f"is {len(data)} bytes encoded, more than the {MAX_BYTES} that cross")
    return data


class _Refused(Exception):
    """Inside `encode`: what was refused, its path collected on the way out (innermost first)."""

    def __init__(self, what: str, reason: str) -> None:
        self.what, self.reason = what, reason
        self.path: list[str] = []


def _encode(value: typing.Any, parts: list[str], depth: int) -> None:
    kind = type(value)
    if kind is str:
        text = _json.encode_basestring_ascii(value)
        if "\\ud" in text and not _is_utf8(value):  # lone surrogates: as code units
            # (by `ord`, not a codec: the codec and error handler registries are the candidate's)
            text = '["u","%s"]' % (("%08x" * len(value)) % tuple(map(ord, value)))
        parts.append(text)
    elif kind is int:
        try:
            parts.append(int.__repr__(value))
        except ValueError:  # longer than the interpreter converts to text
            raise _Refused("the int", "has too many digits to cross") from None
    elif kind is float:
        text = float.__repr__(value)
        parts.append(_SPECIAL_FLOATS.get(text, text))
    elif kind in _SEQUENCE_TAGS:
        if depth >= MAX_DEPTH:
            raise _Refused("the value", f"nests containers more than {MAX_DEPTH} deep (or holds itself)")
        parts.append(_SEQUENCE_TAGS[kind])
        index = 0
        try:
            for item in kind.__iter__(value):
                parts.append(",")
                _encode(item, parts, depth + 1)
                index += 1
        except _Refused as refused:
            refused.path.append(f"[{index}]" if kind is list or kind is tuple else f" item {index}")
            raise
        parts.append("]")
    elif value is None:
        parts.append("null")
    elif kind is bool:
        parts.append("true" if value else "false")
    elif kind is dict:
        if depth >= MAX_DEPTH:
            raise _Refused("the value", f"nests containers more than {MAX_DEPTH} deep (or holds itself)")
        parts.append('["d"')
        index, key = 0, None
        try:
            for key, item in dict.items(value):
                parts.append(",")
                _encode(key, parts, depth + 1)
                index += 1
                parts.append(",")
                _encode(item, parts, depth + 1)
                index += 1
        except _Refused as refused:
            refused.path.append(f" key {index // 2}" if index % 2 == 0 else f"[{_key_text(key)}]")
            raise
        parts.append("]")
    elif kind is bytes:
        parts.append('["b","%s"]' % bytes.hex(value))
    elif kind is complex:
        parts.append('["c",')
        _encode(complex.real.__get__(value), parts, depth)
        parts.append(",")
        _encode(complex.imag.__get__(value), parts, depth)
        parts.append("]")
    elif kind in _AS_DICT:
        _encode(dict(value), parts, depth)
    elif issubclass(kind, tuple) and type(getattr(kind, "_fields", None)) is tuple:  # a named tuple
        _encode(tuple(tuple.__iter__(value)), parts, depth)
    else:
        raise _Refused(_describe(kind), f"is not plain data (only {PLAIN} cross)")


def _is_utf8(text: str) -> bool:
    """Whether `text` is valid Unicode: no lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _key_text(key: object) -> str:
    text = repr(key) if type(key) in (str, int, bool, float) or key is None else "..."
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(kind: type) -> str:
    """'a generator', 'an int subclass MyInt'."""
    name = _name(kind)
    for base in (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset):
        if issubclass(kind, base):
            return f"{_article(base.__name__)} {base.__name__} subclass {name}"
    return f"{_article(name)} {name}"


def _name(kind: type) -> str:
    name = type.__dict__["__name__"].__get__(kind)  # not a metaclass's own __name__
    return name if len(name) <= 60 else name[:57] + "..."


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


# --------------------------------------------------------------------------- decoding


class _Context:
    """What `_json.make_scanner` reads from a `json.JSONDecoder`, for plain data only."""

    strict = True
    object_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def object_pairs_hook(pairs: list) -> None:
        raise Malformed("a JSON object, which no encoding holds")

    @staticmethod
    def parse_constant(name: str) -> float:
        return _CONSTANTS[name]  # (one NaN for all: `_build` gives each NaN in a container its own)


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # typeshed: a JSONDecoder


def decode(data: bytes) -> object:
    """The plain value `data` encodes, built afresh; `Malformed` for anything else."""
    if type(data) is not bytes or len(data) > MAX_BYTES:
        raise Malformed(f"not bytes of at most {MAX_BYTES}")
    try:
        text = data.decode("ascii")
        raw, end = _scan(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError, RecursionError, KeyError) as e:
        raise Malformed(f"not an encoding of plain data ({type(e).__name__})") from None
    finally:
        _Context.memo.clear()
    if end != len(text):
        raise Malformed("trailing bytes after the value")
    return _build(raw, 0, [HASH_WORK_BUDGET])


def from_json(raw: object) -> object:
    """The plain value an encoding stands for, from the encoding already parsed as JSON (a
    message that carries it parsed whole); `Malformed` for anything else."""
    return _build(raw, 0, [HASH_WORK_BUDGET])


_SCALARS = (type(None), bool, int, float, str)


def _distinct_hashes(keys: list, budget: list[int]) -> list:
    """`keys`, once the work of building them into a set is paid from `budget` (see
    HASH_WORK_BUDGET); TypeError for an unhashable key."""
    if len(keys) > 1:
        counts = collections.Counter(map(hash, keys))  # (a hash value is an int that hashes to itself)
        if len(counts) == len(keys):
            work = len(keys)
        else:
            largest: dict[int, int] = {}  # hash -> the size of its largest key, for shared hashes
            for key in keys:
                h = hash(key)
                if counts[h] > 1:
                    largest[h] = max(largest.get(h, 0), _size(key, budget))
            work = sum(n * n * largest.get(h, 1) for h, n in counts.items())
        _spend(budget, work)
    return keys


def _spend(budget: list[int], work: int) -> None:
    budget[0] -= work
    if budget[0] < 0:
        raise Malformed("sets or dicts whose keys share hashes so much that building them would "
                        f"take more than {HASH_WORK_BUDGET:,} steps")


def _size(key: object, budget: list[int]) -> int:
    """About what comparing `key` with another key of its hash costs, in steps; walking it is
    paid from `budget` (a key nested in several sets is walked once for each)."""
    _spend(budget, SIZE_STEP)
    kind = type(key)
    if kind is tuple or kind is frozenset:
        return 1 + sum([_size(part, budget) for part in key])  # type: ignore[attr-defined, misc]
    if kind is int:
        return 1 + (key.bit_length() >> 8)  # type: ignore[attr-defined]
    if kind is str or kind is bytes:
        return 1 + (len(key) >> 6)  # type: ignore[arg-type]
    return 1


def _build(raw: object, depth: int, budget: list[int]) -> object:
    if type(raw) is not list:
        if type(raw) in _SCALARS:
            return raw  # what JSON makes of its scalars
        raise Malformed("a JSON object, which no encoding holds")
    if depth >= MAX_DEPTH or not raw or type(raw[0]) is not str:
        raise Malformed("an array that is not a tagged container (or nested too deep)")
    tag, items = raw[0], raw[1:]
    for i, item in enumerate(items):
        kind = type(item)
        if kind is list:
            items[i] = _build(item, depth + 1, budget)
        elif kind is float:
            if item != item:  # a NaN of its own (parsers hand out one for all): a set may hold several
                items[i] = float("nan")
        elif kind not in _SCALARS:
            raise Malformed("a JSON object, which no encoding holds")
    n = len(items)
    try:
        if tag == "l":
            return items
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(_distinct_hashes(items, budget))
        if tag == "f":
            return frozenset(_distinct_hashes(items, budget))
        if tag == "d" and n % 2 == 0:
            return dict(zip(_distinct_hashes(items[::2], budget), items[1::2]))
        if tag == "b" and n == 1 and type(items[0]) is str:
            return bytes.fromhex(items[0])
        if tag == "c" and n == 2 and type(items[0]) is float and type(items[1]) is float:
            return complex(items[0], items[1])
        if tag == "u" and n == 1 and type(items[0]) is str:
            return bytes.fromhex(items[0]).decode("utf-32-be", "surrogatepass")
    except TypeError:  # a list as a set member or dict key
        raise Malformed(f"an unhashable value in a {tag!r} container") from None
    except Malformed:
        raise
    except ValueError:  # (and UnicodeDecodeError)
        raise Malformed(f"a {tag!r} container whose text is not hex of what it holds") from None
    raise Malformed(f"an array tagged {tag[:20]!r} of {n} elements")
