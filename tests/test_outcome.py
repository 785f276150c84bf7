"""pytest_codegen.outcome: outcome classes and printable class names."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from pytest_codegen.outcome import outcome_class, printable_name


class _Named:
    """A name that is no str: printable_name takes its general path (str() of it)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


@given(st.text(st.characters(codec="ascii")) | st.text())
@example("AssertionError")
@example(" padded")
@example("two  spaces")
@example("tab\tinside")
@example("\x1b[31mRed\x1b[0m")
@example("x" * 201)
@example("")
def test_the_shortcut_for_plain_names_agrees_with_the_general_path(name: str) -> None:
    assert printable_name(name) == printable_name(_Named(name))


def test_names_are_made_printable_and_kept_apart_from_statuses() -> None:
    assert printable_name("\x1b[31mValueError\x1b[0m") == "ValueError"
    assert printable_name("  a \n b ") == "a b"
    assert printable_name("\x00") == "unknown"
    assert outcome_class("failed", "passed") == "passed (exception)"
    assert outcome_class("failed", "KeyError") == "KeyError"
