"""The harness a zygote runs with its job: the candidate's side of a run.

The zygote (see `_sandbox_forker`) reads its job (the program, the setup, the limits; never
the tests), confines itself and runs `run_harness`: it defines the program (and the setup, as
a flat `exec` would), reports that on the result channel (fd 3), then answers the server's
requests on the job pipe until the server closes it:

* `C` + arguments (plain data, `_sandbox_codec`): call the entry point with them; the answer is
  the result as plain data (`value`), or what it was when it was not plain data (`notplain`:
  its description and its truth), or the exception it raised (`raised`: the class's name, its
  nearest builtin class, the message and the candidate's frames).
* `T` + a test compiled by the server: run it here, in process, and report it (`result`): only
  for tests that need more of the program than its entry point (see `_sandbox_routes`).

The server checks every other test itself (see `_sandbox_checking`), so nothing this process
says can pass a test but the values it returns. The harness protects what it can of the
in-process tests: every reference it uses is bound in `_make_harness`, in the forker, before
any candidate code runs, and tests run in a namespace of their own with a private copy of the
builtins. Imported by name by the forker (see `_sandbox_bootstrap`).
"""

from __future__ import annotations

import _json
import builtins
import marshal
import os
import re
import resource
import struct
import sys
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_codec as codec
else:
    import _sandbox_codec as codec

RESULT_FD = 3
MAX_TEXT = 2000
MAX_TB = 6000
FRAME = struct.Struct(">I")  # a request: its length, then its kind (one byte) and payload

_FN_REPR = re.compile(r"<(?:function|built-in function|class) '?([\w.<>]+?)'? at 0x[0-9a-fA-F]+>|<class '([\w.<>]+)'>")
_ESC = _json.encode_basestring_ascii

PRISTINE_BUILTINS: dict = {}  # filled by the forker's main() before anything can change builtins

# A program that names `random` gets it seeded to this before it is defined: a program that
# draws gets the same verdict in every run. Tests are seeded too, before each one, but with
# the client's `sandbox.TEST_SEED`, which no file the candidate can read holds (an in-process
# test brings it along): a program seeded as the tests are could replay their draws and
# return what a test expects. (String hashing is fixed as well: `_sandbox_bootstrap.HASH_SEED`.)
PROGRAM_SEED = 0


def prepare_harness() -> list[tuple[dict, bytes]]:
    """Done in the zygote before the job arrives: the pristine builtins (the snapshot the
    forker took at start; after the fork this process's own copy, and the module attribute
    is rebound so that no name leads to it) and the memory ballast. Returned in a list the
    harness empties, so that nothing else keeps the ballast alive."""
    global PRISTINE_BUILTINS
    pristine, PRISTINE_BUILTINS = PRISTINE_BUILTINS, {}
    return [(pristine, bytes(2 << 20))]


def own_copy(module: typing.Any, builtins_dict: dict) -> dict:
    """`module`'s functions, re-made over a globals dict of their own whose builtins are
    `builtins_dict`: a program that replaces builtins (`len`, `isinstance`) does not change
    how its results are encoded."""
    own = dict(vars(module))
    own["__builtins__"] = builtins_dict
    function = type(own_copy)
    for name, value in own.items():
        if type(value) is function and value.__module__ == module.__name__:
            own[name] = function(value.__code__, own, value.__name__, value.__defaults__, value.__closure__)
    return own


class Describer(typing.NamedTuple):
    """Exceptions described for the verdict, over known sources (see `make_describer`)."""

    describe: typing.Callable[..., tuple[str, str, str, str]]
    frame_lines: typing.Callable[..., list[str]]
    name_and_text: typing.Callable[[typing.Any, typing.Any], tuple[str, str]]
    cut: typing.Callable[..., str]


def make_describer(sources: dict, captured: dict | None = None) -> Describer:
    """Over `sources` (filename -> source text): `describe(where)` gives (error type, message,
    line, traceback) of the exception being handled, its traceback limited to frames of those
    sources (with `remote` = (name, text, lines): as another process reported it);
    `frame_lines(tb)` just those frames' lines. Every builtin it uses is bound here, from
    `captured` where given."""
    b = captured if captured is not None else vars(builtins)
    _str, _exact, _int, _len, _type = b["str"], str.__str__, b["int"], b["len"], b["type"]
    _issubclass, _reversed, _BaseException, _SyntaxError = b["issubclass"], b["reversed"], b["BaseException"], \
        b["SyntaxError"]
    _exc_info, _fn_sub, _tname = sys.exc_info, _FN_REPR.sub, type.__dict__["__name__"].__get__
    split: dict = {}

    def cut(s: str, limit: int = MAX_TEXT) -> str:
        s = _exact(s)
        return s if _len(s) <= limit else s[:limit] + "... [%d more characters]" % (_len(s) - limit)

    def source_line(filename: str, lineno: typing.Any) -> str:
        lines = split.get(filename)
        if lines is None and filename in sources:
            lines = split[filename] = sources[filename].splitlines()
        if lines is None or _type(lineno) is not _int or not 0 < lineno <= _len(lines):
            return ""
        return cut(lines[lineno - 1].strip(), 500)

    def explain(text: str) -> str:
        """pytest's multi-line assertion explanation on one line, without function addresses."""
        parts = []
        for raw in text.split("\n"):
            raw = raw.strip()
            if raw.startswith("+"):
                raw = raw[1:].strip()
            if raw:
                parts.append(raw)
        return _fn_sub(lambda m: m.group(1) or m.group(2), " ".join(parts))

    def name_and_text(et: typing.Any, ev: typing.Any) -> tuple[str, str]:
        try:
            name = cut(_tname(et), 200)
            if b.get(name, et) is not et:  # its own class under a builtin's name (a fake MemoryError)
                name = cut("%s (not the builtin)" % name, 200)
        except _BaseException:
            name = "BaseException"
        try:
            text = cut(_str(ev))
        except _BaseException:
            text = "<exception str() failed>"
        return name, text

    def walk(tb: typing.Any) -> list[tuple]:
        frames = []
        while tb is not None:
            co = tb.tb_frame.f_code
            if co.co_filename in sources:
                frames.append((co.co_filename, tb.tb_lineno, co.co_name))
            tb = tb.tb_next
        return frames

    def frame_lines(tb: typing.Any, et: typing.Any = None, ev: typing.Any = None) -> list[str]:
        """The traceback's lines for frames of known sources, long recursions shortened (and
        a SyntaxError's own line)."""
        shown = walk(tb)
        if _len(shown) > 40:
            shown = shown[:10] + [("", _len(shown) - 30, "")] + shown[-20:]
        out = []
        last, repeats = None, 0
        for f in shown:
            if f[0] == "":
                out.append("  ... %d frames omitted ...\n" % f[1])
                last = None
                continue
            if f == last:
                repeats += 1
                if repeats >= 3:
                    continue
            else:
                if repeats >= 3:
                    out.append("  [Previous line repeated %d more times]\n" % (repeats - 2))
                repeats = 0
            last = f
            out.append('  File "%s", line %s, in %s\n' % f)
            src = source_line(f[0], f[1])
            if src:
                out.append("    %s\n" % src)
        if repeats >= 3:
            out.append("  [Previous line repeated %d more times]\n" % (repeats - 2))
        if et is not None and _issubclass(et, _SyntaxError) and _type(ev.filename) is _str:
            out.append('  File "%s", line %s\n' % (ev.filename, ev.lineno))
            if _type(ev.text) is _str:
                out.append("    %s\n" % cut(ev.text.strip(), 500))
        return out

    def describe(where: str, remote: tuple | None = None) -> tuple[str, str, str, str]:
        handled: typing.Any = _exc_info()  # ev's SyntaxError fields are read once `et` says it is one
        et, ev, tb = handled
        try:
            if remote is not None:
                (name, text, far) = remote
            else:
                (name, text), far = name_and_text(et, ev), []
            message = cut("%s: %s" % (name, text)) if text else name
            trace = "".join(["Traceback (most recent call last):\n", *frame_lines(tb, et, ev), *far, message + "\n"])
            if _len(trace) > MAX_TB:
                trace = trace[: MAX_TB // 3] + "\n  ...\n" + trace[-(2 * MAX_TB) // 3 :]
            line = ""
            for f in _reversed(walk(tb)):
                if f[0] == where or (where == "<define>" and f[0] in ("<candidate>", "<setup>")):
                    line = source_line(f[0], f[1])
                    break
            if not line and et is not None and _issubclass(et, _SyntaxError) and _type(ev.text) is _str:
                line = cut(ev.text.strip(), 500)
            if name == "AssertionError" and text:
                values = cut(explain(text), 1000)
                line = "%s  # %s" % (line, values) if line else values
            return name, message, line, trace
        except _BaseException:
            name = name_and_text(et, ev)[0]
            return name, name, "", ""

    return Describer(describe, frame_lines, name_and_text, cut)


def _make_harness() -> typing.Callable[[dict, int, int, bool, list], None]:
    """Build, once in the forker, the harness every child runs: every reference it uses is
    bound here, before any candidate code runs anywhere, and its helpers are made here; a child
    only fills in its job (`run`). What a child does not touch, it does not copy."""
    captured = dict(vars(builtins))
    _write, _read, _exit, _getpid, _kill = os.write, os.read, os._exit, os.getpid, os.kill
    _setrlimit_raw, _NPROC = resource.setrlimit, resource.RLIMIT_NPROC
    _settrace, _setprofile = sys.settrace, sys.setprofile
    _loads, _import, _program_seed = marshal.loads, __import__, PROGRAM_SEED
    own_codec = own_copy(codec, captured)
    _encode, _decode, _NotPlain = own_codec["encode"], own_codec["decode"], codec.NotPlain
    _unpack, _header = FRAME.unpack, FRAME.size
    _esc = _ESC
    _len, _exec, _compile, _dict, _type, _bool = len, exec, compile, dict, type, bool
    _isinstance, _tname = isinstance, type.__dict__["__name__"].__get__
    _BaseException, _MemoryError, _SyntaxError = BaseException, MemoryError, SyntaxError
    _OSError, _EOFError, _ValueError = OSError, EOFError, ValueError
    _stdout, _stderr = sys.stdout, sys.stderr
    _fd = RESULT_FD
    run: dict = {}  # this child's: pid, kill_all, sources, what the pipe has sent
    describe, frame_lines, name_and_text, cut = make_describer(run.setdefault("sources", {}), captured)

    def send(body: str) -> None:
        if _getpid() != run["pid"]:  # a fork of the candidate wandered back into the harness
            _exit(0)
        for stream in (_stdout, _stderr):  # its output first, as the program wrote it
            try:
                stream.flush()
            except _BaseException:
                pass
        data = ("{%s}\n" % body).encode()
        while data:
            try:
                n = _write(_fd, data)
            except _OSError:
                _exit(0)  # the channel is gone: the server counts the missing reports
            data = data[n:]

    def failure(kind: str, extra: str, info: tuple[str, str, str, str]) -> str:
        return '"k":"%s"%s,"ok":false,"et":%s,"msg":%s,"line":%s,"tb":%s' % (
            kind, extra, _esc(info[0]), _esc(info[1]), _esc(info[2]), _esc(info[3]))

    def take(fd: int) -> tuple[bytes, bytes]:
        """(kind, payload) of the server's next request; EOFError once it has closed the pipe."""
        buffer = run["buffer"]
        while _len(buffer) < _header:
            buffer += more(fd)
        (n,) = _unpack(buffer[:_header])
        end = _header + n
        while _len(buffer) < end:
            buffer += more(fd)
        run["buffer"] = buffer[end:]
        return buffer[_header : _header + 1], buffer[_header + 1 : end]

    def more(fd: int) -> bytes:
        chunk = _read(fd, 1 << 16)
        if not chunk:
            raise _EOFError
        return chunk

    def finish() -> None:
        if run["kill_all"]:
            try:
                # No process of the uid may fork any more (not even a thread of this one,
                # and the hard limit cannot be raised again), then kill every other one.
                _setrlimit_raw(_NPROC, (0, 0))
                _kill(-1, 9)
            except _BaseException:
                _exit(0)  # no end message: the server kills what is left
        send('"k":"end"')
        _exit(0)

    def answer_call(function: typing.Any, payload: bytes, ballast: list) -> None:
        call: typing.Any = _decode(payload)  # (args, kwargs), from the server
        _settrace(None)
        _setprofile(None)
        try:
            value = function(*call[0], **call[1])
        except _BaseException as e:
            if _isinstance(e, _MemoryError):
                ballast.clear()
            send(raised(e))
            return
        try:
            encoded = _encode(value)
        except _BaseException as e:  # not plain (or a hostile value's methods raised)
            send(not_plain(value, e))
        else:
            send('"k":"value","v":%s' % encoded.decode())

    def raised(e: BaseException) -> str:
        """The exception the call raised, for the server to raise in the test."""
        try:
            et = _type(e)
            name, text = name_and_text(et, e)
            base, pristine = "Exception", run["pristine"]
            for k in et.__mro__:
                if pristine.get(_tname(k)) is k:
                    base = _tname(k)
                    break
            lines = "".join(frame_lines(e.__traceback__, et, e))
        except _BaseException:
            name, base, text, lines = "BaseException", "Exception", "<the exception could not be described>", ""
        return '"k":"raised","et":%s,"base":%s,"msg":%s,"tb":%s' % (_esc(name), _esc(base), _esc(text), _esc(lines))

    def not_plain(value: typing.Any, why: BaseException) -> str:
        what = cut(why.what, 300) if _isinstance(why, _NotPlain) else "a value that could not be encoded"  # type: ignore[attr-defined]
        try:
            truth, error = ("true" if _bool(value) else "false"), ""
        except _BaseException as e:
            truth, error = "null", cut("%s: %s" % name_and_text(_type(e), e), 300)
        return '"k":"notplain","what":%s,"truth":%s,"error":%s' % (_esc(what), truth, _esc(error))

    def test_namespace(ns: dict, before: dict, pristine: dict, entry: str | None, function: typing.Any) -> dict:
        """The in-process tests' namespace: the program's names (minus shadowed builtins),
        pristine builtins."""
        setup_names = {k for k, v in ns.items() if k not in before or before[k] is not v}
        tns = {k: v for k, v in ns.items() if k not in pristine or k == entry or k in setup_names}
        tns["__builtins__"] = pristine  # this process's own copy: the program cannot reach it by name
        tns["__name__"] = "__test__"
        if entry:
            if function is not None:
                tns["candidate"] = function
            else:
                tns.pop("candidate", None)
        return tns

    def harness(job: dict, req_fd: int, mypid: int, kill_all: bool, prepared: list[tuple[dict, bytes]]) -> None:
        """Define the program, then answer the server's requests on `req_fd`. Never returns."""
        pristine, first = prepared.pop()
        ballast = [first]  # emptied on MemoryError, so the report can be built
        del first
        program, setup_code, entry = job["program"], job["setup"], job["entry_point"]
        sources = run["sources"]
        sources.update({"<candidate>": program, "<setup>": job["setup_source"]})
        run.update(pid=mypid, kill_all=kill_all, pristine=pristine, buffer=b"")

        ns = {"__name__": "__candidate__", "__builtins__": builtins}
        # From here on the result channel is the candidate's too: a "sandbox_error" after this
        # message is the program's doing, not a confinement failure.
        send('"k":"start"')
        try:
            if "random" in program:  # its draws, too, are the same in every run
                _import("random").seed(_program_seed)
            code = _compile(program, "<candidate>", "exec", dont_inherit=True)
            _exec(code, ns)
            before = _dict(ns)
            if setup_code is not None:
                _exec(setup_code, ns)
            elif job["setup_error"] is not None:
                raise _SyntaxError(job["setup_error"]["msg"])
        except _BaseException as e:
            if _isinstance(e, _MemoryError):
                ballast.clear()
            info = describe("<define>")
            send(failure("define", "", info))
            while True:  # until the server has taken that in and closed the pipe
                try:
                    take(req_fd)
                except (_EOFError, _OSError, _ValueError):
                    finish()
        function = ns.get(entry) if entry else None
        send('"k":"define","ok":true,"entry":%s' % ("true" if function is not None else "false"))

        tns: dict | None = None  # the in-process tests' namespace, made for the first of them
        while True:
            try:
                kind, payload = take(req_fd)
            except (_EOFError, _OSError, _ValueError):
                finish()
            if kind == b"C":
                answer_call(function, payload, ballast)
            elif kind == b"T":
                filename, source, tcode, test_seed = _loads(payload)
                sources[filename] = source
                if tns is None:
                    tns = test_namespace(ns, before, pristine, entry, function)
                try:
                    if "random" in source:  # (imported only then: the import costs every run)
                        _import("random").seed(test_seed)
                    _settrace(None)
                    _setprofile(None)
                    _exec(tcode, tns)
                except _BaseException as e:
                    if _isinstance(e, _MemoryError):
                        ballast.clear()
                    send(failure("result", "", describe(filename)))
                else:
                    send('"k":"result","ok":true')
            else:
                finish()

    return harness


run_harness = _make_harness()
