"""Plain data across the sandbox's process boundary: what a candidate's function returns (and
the arguments a test passes it), as bytes that rebuild only plain values on the other side.

Plain values are None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets
and frozensets of them, of exactly those types: a subclass (an int with its own `__eq__`), a
generator or any other object is refused by `encode` with a message that says what and where.
`decode` builds fresh objects of those types only, so nothing the sending process made (an
object that says it equals everything, a `__hash__` or `__repr__` of its own) reaches the
receiver, whatever bytes it sends: malformed input raises `Malformed`.

The bytes are JSON text (decoded by the `_json` C scanner, made for untrusted input), every
container an array whose first element names its type: `["l", ...]` a list, `"t"` a tuple,
`"s"` a set, `"f"` a frozenset, `"d"` a dict (keys and values alternating), `"b"` bytes (hex),
`"c"` a complex (real, imaginary). Floats are written with `repr` (exact), NaN and the
infinities as JSON's usual extensions. Imports nothing but `_json`: the sandbox's forker loads
it by name (see `_sandbox_bootstrap`), before any candidate code runs.
"""

from __future__ import annotations

import _json
import typing

MAX_DEPTH = 100  # containers within containers
MAX_ITEMS = 1_000_000  # values in all
MAX_BYTES = 16 << 20

_PLAIN = "None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets and frozensets of them"
_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_SEQUENCE_TAGS: dict[type, str] = {list: "l", tuple: "t", set: "s", frozenset: "f"}


class NotPlain(TypeError):
    """The value holds something other than plain data (or too much of it)."""


class Malformed(ValueError):
    """The bytes are not an encoding of plain data."""


def encode(value: object) -> bytes:
    """The encoding of `value`; `NotPlain` says what in it is not plain data, and where."""
    parts: list[str] = []
    budget = [MAX_ITEMS]
    _encode(value, parts, 0, budget, "")
    data = "".join(parts).encode("ascii")
    if len(data) > MAX_BYTES:
        raise NotPlain(f"the value is {len(data)} bytes encoded, more than the {MAX_BYTES} that cross")
    return data


def _encode(value: typing.Any, parts: list[str], depth: int, budget: list[int], where: str) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise NotPlain(f"the value holds more than {MAX_ITEMS} items")
    kind = type(value)
    if value is None:
        parts.append("null")
    elif kind is bool:
        parts.append("true" if value else "false")
    elif kind is int:
        try:
            parts.append(int.__repr__(value))
        except ValueError:  # longer than the interpreter converts to text
            raise NotPlain(f"the int{_at(where)} has too many digits to cross") from None
    elif kind is float:
        text = float.__repr__(value)
        parts.append(_SPECIAL_FLOATS.get(text, text))
    elif kind is str:
        parts.append(_json.encode_basestring_ascii(value))
    elif kind is bytes:
        parts.append('["b","%s"]' % bytes.hex(value))
    elif kind is complex:
        parts.append('["c",')
        _encode(complex.real.__get__(value), parts, depth, budget, where)
        parts.append(",")
        _encode(complex.imag.__get__(value), parts, depth, budget, where)
        parts.append("]")
    elif kind in _SEQUENCE_TAGS or kind is dict:
        if depth >= MAX_DEPTH:
            raise NotPlain(f"the value{_at(where)} nests containers more than {MAX_DEPTH} deep (or holds itself)")
        if kind is dict:
            parts.append('["d"')
            for index, (key, item) in enumerate(dict.items(value)):
                parts.append(",")
                _encode(key, parts, depth + 1, budget, f"{where} key {index}")
                parts.append(",")
                _encode(item, parts, depth + 1, budget, f"{where}[{_key_text(key)}]")
        else:
            parts.append('["%s"' % _SEQUENCE_TAGS[kind])
            ordered = kind in (list, tuple)
            for index, item in enumerate(kind.__iter__(value)):
                parts.append(",")
                _encode(item, parts, depth + 1, budget, f"{where}[{index}]" if ordered else f"{where} item {index}")
        parts.append("]")
    else:
        raise NotPlain(f"{_describe(kind)}{_at(where)} is not plain data (only {_PLAIN} cross)")


def _at(where: str) -> str:
    return f" at {where.strip()}" if where else ""


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
        return _CONSTANTS[name]


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
    return _build(raw, 0)


def _build(raw: object, depth: int) -> object:
    if type(raw) is not list:
        return raw  # None, bool, int, float or str: what the scanner makes of JSON scalars
    if depth >= MAX_DEPTH or not raw or type(raw[0]) is not str:
        raise Malformed("an array that is not a tagged container (or nested too deep)")
    tag, n = raw[0], len(raw)
    try:
        if tag == "l":
            return [_build(raw[i], depth + 1) for i in range(1, n)]
        if tag == "t":
            return tuple([_build(raw[i], depth + 1) for i in range(1, n)])
        if tag == "s":
            return {_build(raw[i], depth + 1) for i in range(1, n)}
        if tag == "f":
            return frozenset([_build(raw[i], depth + 1) for i in range(1, n)])
        if tag == "d" and n % 2 == 1:
            return {_build(raw[i], depth + 1): _build(raw[i + 1], depth + 1) for i in range(1, n, 2)}
        if tag == "b" and n == 2 and type(raw[1]) is str:
            return bytes.fromhex(raw[1])
        if tag == "c" and n == 3 and type(raw[1]) is float and type(raw[2]) is float:
            return complex(raw[1], raw[2])
    except TypeError:  # a list as a set member or dict key
        raise Malformed(f"an unhashable value in a {tag!r} container") from None
    except ValueError:
        raise Malformed("bytes that are not hex") from None
    raise Malformed(f"an array tagged {tag[:20]!r} of {n - 1} elements")
