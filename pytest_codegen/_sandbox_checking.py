"""The server's side of a run: it runs the tests, the candidate's process only answers calls.

The sandbox server never runs candidate code, and with this module it runs the tests itself:
after the candidate's process has defined the program (see `_sandbox_harness`), `Checking`
runs the setup (HumanEval's prompt helpers included) in a namespace of the server's, then every
*checked* test (see `_sandbox_routes`) there, with `candidate` and the entry point's name bound
to a stub. The stub sends the arguments to the candidate's process as plain data
(`_sandbox_codec`) and returns what comes back: the result as plain data, built afresh here;
or, for anything else (a generator, a `re.Match`, an int subclass with its own `__eq__`), a
`NotPlainData` that keeps only the value's truth (a test may check that, or compare it: it is
equal to nothing else, the identity comparison Python makes for objects without an `__eq__` of
their own; any other use fails with a message that says why); or it raises the exception the
call raised, as an instance of its nearest builtin class, described with the candidate's own
class name, message and frames. Tests of other forms are sent to the candidate's process and
run there (`in process`), as before; their reports are taken as they come.

Requests are answered in the order they were sent, so the server need not wait for each: the
calls whose arguments are all literals (`candidate([1.0, 2.0], 0.3)`, the form of nearly every
benchmark assert) are all sent with the job, and a test's call takes the
answer to the next of its own such requests with the same arguments (else it asks).
Where those are all the calls the tests can make (see `_sandbox_routes.only_literal_calls`),
the job says so, and the candidate's process ends as soon as it has answered them: one round
trip in all, as many as when the tests ran in that process. The candidate then may compute a
call its test never makes (after an assert that failed first), which changes no verdict: a
failed run does not wait for those answers, a passing one takes them all.

A checked test whose assert failed is explained here too, once the run is over (`explain`):
if every call it makes is a literal one known before it ran, it runs once more, compiled
through pytest's assertion rewriting, in a copy of the namespace as it found it, its calls
answered with the answers it got the first time, and the values the rewritten assert shows go
into its report's line and message. Nothing it does again reaches a verdict; a test with other
calls (random arguments, calls in a loop) is explained by the client with a second run instead
(see `Sandbox.run`).

Whatever the candidate's process does (walk frames, `gc`, read its own memory, write on the
result channel, return objects that claim equality, redefine the prompt's helpers), a checked
test passes only if the values it returned make the server's own asserts hold. Anything out of
protocol on the channel (a malformed value, a reply of the wrong kind) makes the run corrupt.
Imported by name by the server (see `_sandbox_bootstrap`).
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import marshal
import random
import sys
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_codec as codec
    from pytest_codegen._sandbox_harness import make_describer
    from pytest_codegen._sandbox_runstate import RunState
else:
    import _sandbox_codec as codec
    from _sandbox_harness import make_describer
    from _sandbox_runstate import RunState


class Stopped(BaseException):
    """The run is over (timeout, exit, corrupt channel) while a test waited for an answer."""


class Channel(typing.Protocol):
    """The server's link to the run's candidate process."""

    def send(self, kind: bytes, payload: bytes) -> None:
        """Queue a request (written as the candidate's process takes them)."""

    def close(self) -> None:
        """No request follows those queued: the candidate's process may end once it has
        answered them."""

    def receive(self) -> dict:
        """The next message from the candidate's process (Stopped if none comes)."""


class _Request:
    """A request sent, and once it has come, its answer."""

    __slots__ = ("payload", "answer")

    def __init__(self, payload: bytes) -> None:
        self.payload: bytes = payload
        self.answer: dict | None = None


class NotPlainData:
    """What the candidate returned when it was not plain data: its description and truth."""

    __slots__ = ("_what", "_truth", "_truth_error")

    def __init__(self, what: str, truth: bool | None, truth_error: str) -> None:
        self._what, self._truth, self._truth_error = what, truth, truth_error

    def _refuse(self, *args: object) -> typing.NoReturn:
        raise TypeError(
            f"the candidate returned {self._what}, which is not plain data (only {codec.PLAIN} reach "
            "the checking): a test can check its truth or compare it, nothing more"
        )

    def __repr__(self) -> str:
        return f"<not plain data: {self._what}>"

    def __bool__(self) -> bool:
        if self._truth is None:
            raise TypeError(f"the truth of {self._what} is unknown: {self._truth_error}")
        return self._truth

    def __getattr__(self, name: str) -> typing.NoReturn:
        raise AttributeError(f"{name}: the candidate returned {self._what}, which is not plain data")

    __iter__ = __len__ = __getitem__ = __contains__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __float__ = __int__ = _refuse


class _Strayed(BaseException):
    """A replayed test called the candidate otherwise than the first time."""


class _Discarded:
    """sys.stdout and sys.stderr while a failed test runs again to be explained."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _Output:
    """sys.stdout and sys.stderr while a test runs here: what it prints joins the run's output."""

    def __init__(self, state: RunState, cap: int) -> None:
        self.state, self.cap = state, cap

    def write(self, text: str) -> int:
        self.state.add_output(str(text).encode("utf-8", "backslashreplace"), self.cap)
        return len(text)

    def flush(self) -> None:
        pass


class Checking:
    """One run's tests, checked here: `tests` as the server compiled them ([name, filename,
    source, code or None, compile error or None, checked, the encoded arguments of its literal
    calls, whether those are all the calls it can make]), the setup's code, source and compile
    error, the entry point; results go into `state` (its `define` and `results`)."""

    def __init__(self, tests: list, setup: tuple[typing.Any, str, dict | None], entry: str | None,
                 channel: Channel, state: RunState, output_cap: int,
                 rewrite: typing.Callable[[str, str], typing.Any] | None, test_seed: int) -> None:
        self.tests, self.entry, self.channel, self.state = tests, entry, channel, state
        self.test_seed = test_seed  # `random`'s seed before every checked test (see `sandbox.TEST_SEED`)
        self.rewrite = rewrite  # a test's code through pytest's assertion rewriting: explain here
        self.answered: list[tuple[bytes, dict]] = []  # the running test's calls and their answers
        # (test, its calls and their answers, the namespace as the test found it)
        self.failed_asserts: list[tuple[int, list[tuple[bytes, dict]], dict[str, typing.Any]]] = []
        self.explained: list[int] = []  # the tests whose failed assert `explain` explained
        self.setup_code, setup_source, self.setup_error = setup
        self.sources = {"<setup>": setup_source, **{t[1]: t[2] for t in tests}}
        self.describer = make_describer(self.sources)
        self.output: _Output | _Discarded = _Output(state, output_cap)
        self.raised: tuple | None = None  # (exception, name, text, the candidate's frames) of the last call
        self.over = False  # the run stopped while a test waited
        self.unanswered: collections.deque[_Request] = collections.deque()  # in the order sent
        self.ahead: collections.deque[_Request] = collections.deque()  # the running test's literal calls
        self.closed = False  # every request is sent

    # --- the stub ------------------------------------------------------------------------

    def _stub(self, name: str) -> typing.Callable[..., typing.Any]:
        """The candidate as the checked tests see it: a function of the entry point's name."""

        def stub(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            return self.call(*args, **kwargs)

        stub.__name__ = stub.__qualname__ = name  # as assertion explanations show it
        return stub

    def call(self, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        """A call of the candidate, answered by its process."""
        try:
            request = codec.encode((args, kwargs))
        except codec.NotPlain as e:
            raise TypeError(f"the test passes the candidate {e.what}, which cannot cross to the candidate's "
                            f"process (only {codec.PLAIN} do)") from None
        msg = self._answer(self._ahead(request) or self._send(b"C", request))
        self.answered.append((request, msg))
        return self._value(msg)

    def _value(self, msg: dict) -> typing.Any:
        """What a call returns (or raises) for the candidate's answer `msg`."""
        kind = msg.get("k")
        if kind == "value":
            try:
                return codec.from_json(msg.get("v"))
            except codec.Malformed as e:
                self._broken(f"the candidate's process sent a malformed value ({e})")
        if kind == "notplain":
            what, truth, error = msg.get("what"), msg.get("truth"), msg.get("error")
            if type(what) is str and truth in (True, False, None) and type(error) is str:
                return NotPlainData(what[:300], truth, error[:300])
        elif kind == "raised":
            fields = [msg.get(k) for k in ("et", "base", "msg", "tb")]
            if all(type(v) is str for v in fields):
                name, base, text, lines = typing.cast("list[str]", fields)
                exc = self._stand_in(base, text)
                self.raised = (exc, name[:200], text, [lines])
                raise exc
        self._broken(f"the candidate's process answered a call with {str(kind)[:40]!r}")

    @staticmethod
    def _stand_in(base: str, text: str) -> BaseException:
        """An instance of the builtin exception class `base` (Exception if it is none)."""
        cls = vars(builtins).get(base)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            cls = Exception
        try:
            return cls(text)
        except Exception:  # a class that wants other arguments (UnicodeDecodeError, ExceptionGroup)
            try:
                return cls.__new__(cls)
            except Exception:
                return Exception(text)

    def _ahead(self, payload: bytes) -> _Request | None:
        """The running test's first literal call with these arguments not yet taken. Calls
        were sent in the order of the source, which is not always the order Python makes them
        (`a if f(1) else b`, `d[f(1)] = f(2)`); those the test does not make (an assert's
        message, a branch not taken) are left over."""
        ahead = self.ahead
        for index, request in enumerate(ahead):
            if request.payload == payload:
                del ahead[index]
                return request
        return None

    def _send(self, kind: bytes, payload: bytes) -> _Request:
        if self.closed:  # (a call `_sandbox_routes.only_literal_calls` did not foresee)
            self._broken("a call of the candidate that the server did not foresee")
        request = _Request(payload)
        self.channel.send(kind, payload)
        self.unanswered.append(request)
        return request

    def _answer(self, request: _Request) -> dict:
        """`request`'s answer, once those of the requests sent before it have come."""
        while request.answer is None:
            if self.over:
                raise Stopped
            try:
                msg = self.channel.receive()
            except Stopped:
                self.over = True
                raise
            self.unanswered.popleft().answer = msg
        return request.answer

    def _broken(self, why: str) -> typing.NoReturn:
        if not self.state.corrupt:
            self.state.corrupt = why
        self.over = True
        raise Stopped

    # --- the run -------------------------------------------------------------------------

    def run(self) -> bool:
        """Take the definition's report, then check every test in order (stopping at the first
        MemoryError, or when the run is over). True if the candidate's process may still be
        busy with calls no test made (the run failed: the server stops it)."""
        busy = self._run()
        st = self.state
        # A defined program's genuine end follows the answers to every request (those not
        # taken yet wait in the inbox).
        if st.end and (st.define or {}).get("ok") and len(self.unanswered) > len(st.inbox) and not st.corrupt:
            st.corrupt = "an end message before every request was answered"
        return busy

    def _run(self) -> bool:
        st = self.state
        # sent with the job, before the program is even defined (a child whose program failed
        # to define takes them and answers none)
        ahead = [[self._send(b"C", p) for p in test[6]] if test[5] and test[3] is not None else []
                 for test in self.tests]
        if all(test[5] and test[7] for test in self.tests if test[3] is not None):
            self.channel.close()  # then its end comes with its answers: no round trip more
            self.closed = True
        try:
            defined = self.channel.receive()
        except Stopped:
            return False
        if defined.get("k") != "define" or defined.get("ok") not in (True, False):
            self.state.corrupt = f"unexpected {str(defined.get('k'))[:40]!r} message instead of the definition"
            return False
        if not defined["ok"]:
            st.define = defined
            return False
        tns: dict[str, typing.Any] = {"__builtins__": dict(vars(builtins)), "__name__": "__test__"}
        failed = self._setup(tns)
        if failed is not None:
            st.define = failed
            return False
        st.define = {"ok": True}
        if self.entry and defined.get("entry") is True:
            tns["candidate"] = tns[self.entry] = self._stub(self.entry)
        for (_name, filename, source, code, error, checked, _literal, every_call_literal), literal in zip(
                self.tests, ahead):
            self.ahead = collections.deque(literal)
            self.answered = []
            if code is None:
                report = {"ok": False, "et": error["et"], "msg": error["msg"], "line": error["line"], "tb": ""}
            elif checked:
                # Only a test whose every call is known up front is explained here: its calls
                # cannot loop, so the replay ends (one with random arguments could loop on the
                # calls the replay refuses). Bindings as it found them: later tests may rebind.
                replayable = every_call_literal and self.rewrite is not None
                found = dict(tns) if replayable else {}
                report = self._check(code, filename, tns)
                if report.get("et") == "AssertionError" and replayable:
                    self.failed_asserts.append((len(st.results), self.answered, found))
            else:
                report = self._in_process(filename, source, code)
            if self.over or st.corrupt:
                return False
            st.results.append(report)
            if report.get("et") == "MemoryError":
                return bool(self.unanswered)
        if not self.unanswered or any(not r["ok"] for r in st.results):
            return bool(self.unanswered)
        try:  # a passing run takes every answer: its end comes after them
            self._answer(self.unanswered[-1])
        except Stopped:
            pass
        return False

    # --- explaining failed asserts ---------------------------------------------------------

    def explain(self) -> None:
        """Once every test has run: run each checked test whose assert failed once more, here,
        compiled through pytest's assertion rewriting, its calls of the candidate answered
        with the answers it got (in a copy of the namespace as the test found it, its output
        dropped), and take the values the rewritten assert shows into its report's line and
        message. Only tests whose every call was literal, and only where one fails the same
        way again, making the same calls; the others are left for the client's explaining run.
        The verdict is decided already: this changes no test's outcome, only how a failure
        reads."""
        for index, answered, found in self.failed_asserts:
            report = self.state.results[index]
            _name, filename, source = self.tests[index][:3]
            try:
                code = self.rewrite(filename, source) if self.rewrite is not None else None
                again = self._replay(code, filename, answered, found) if code is not None else None
            except Exception:  # a rewriter that fails: no explanation here
                again = None
            if again is not None and again.get("et") == "AssertionError":
                report["msg"], report["line"] = again["msg"], again["line"]
                self.explained.append(index)

    def _replay(self, code: typing.Any, filename: str, answered: list[tuple[bytes, dict]],
                found: dict[str, typing.Any]) -> dict | None:
        replies = collections.deque(answered)
        strayed = []  # a call that was not made the first time (the test catches what it raises)

        def replay(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            try:
                request = codec.encode((args, kwargs))
            except codec.NotPlain:
                request = b""
            if not replies or replies[0][0] != request:
                strayed.append(request)
                raise _Strayed("not a call the test made the first time")  # not an Exception: uncaught
            return self._value(replies.popleft()[1])

        tns = dict(found)
        if self.entry and "candidate" in tns:
            replay.__name__ = replay.__qualname__ = self.entry  # as the assertion shows it
            tns["candidate"] = tns[self.entry] = replay
        output, self.output = self.output, _Discarded()
        try:
            report = self._check(code, filename, tns)
        finally:
            self.output = output
        return None if report.get("ok") or replies or strayed else report

    def _setup(self, tns: dict) -> dict | None:
        if self.setup_error is not None:
            return {"ok": False, "line": self.setup_error["line"], "tb": "",
                    **{k: self.setup_error[k] for k in ("et", "msg")}}
        if self.setup_code is None:
            return None
        try:
            with self._printing():
                exec(self.setup_code, tns)  # noqa: S102  # trusted: the suite's own setup
        except BaseException:
            return self._failure("<define>")
        return None

    def _check(self, code: typing.Any, filename: str, tns: dict) -> dict:
        self.raised = None
        random.seed(self.test_seed)  # the tests' `random` is this server's module
        try:
            with self._printing():
                exec(code, tns)  # noqa: S102  # trusted: the suite's test, compiled by the server
        except BaseException:
            return self._failure(filename)
        return {"ok": True}

    def _in_process(self, filename: str, source: str, code: typing.Any) -> dict:
        # The candidate's process, where this test runs, can read its seed: one derived from the
        # checked tests' one way, so that it learns nothing of theirs.
        seed = int.from_bytes(hashlib.sha256(b"in-process:%d" % self.test_seed).digest()[:8], "big")
        try:
            msg = self._answer(self._send(b"T", marshal.dumps((filename, source, code, seed))))
        except Stopped:
            return {}
        if msg.get("k") != "result" or msg.get("ok") not in (True, False):
            try:
                self._broken(f"the candidate's process answered a test with {str(msg.get('k'))[:40]!r}")
            except Stopped:
                return {}
        if msg["ok"]:
            return {"ok": True}
        return {"ok": False, **{k: msg.get(k) for k in ("et", "msg", "line", "tb")}}

    def _failure(self, where: str) -> dict:
        ev = sys.exc_info()[1]
        remote = None
        if self.raised is not None and self.raised[0] is ev:
            remote = self.raised[1:]
        et, msg, line, tb = self.describer.describe(where, remote)
        return {"ok": False, "et": et, "msg": msg, "line": line, "tb": tb}

    def _printing(self) -> typing.ContextManager[None]:
        return _Redirected(self.output)


class _Redirected:
    """sys.stdout and sys.stderr to `output` for a while."""

    def __init__(self, output: _Output | _Discarded) -> None:
        self.output = output

    def __enter__(self) -> None:
        self.saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self.output

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self.saved
