"""The options a project pins in its pytest configuration file (pytest.ini, tox.ini, setup.cfg
or pyproject.toml's [tool.pytest.ini_options]), as ini keys: ``codegen_pipeline = refine``.

The command line (addopts and PYTEST_ADDOPTS included) overrides the ini file, which overrides
the built-in default. Their command-line options default to None, so that "not given" is told
apart from "given the default"; `pin_from_ini` then fills in each option's value once, in
`config.option`, where every reader of the option finds it. An ini value is converted and
checked as its option's is (type and choices here, the rest by the checks the plugin runs on
every value), and a bad one is a usage error that names the ini key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

OFF = "off"  # codegen_cache = off: no generation cache


@dataclass(frozen=True)
class Pinned:
    """A command-line option with an ini key."""

    flag: str  # "--exec-timeout"
    default: Any
    field: str | None  # the RunSettings field it sets, if any (named in its checks' messages)
    convert: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()
    # A path, relative to the ini file's directory; for names that may be paths: the suffix
    # that makes one.
    path_suffix: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def ini(self) -> str:
        return "codegen_" + self.dest.removeprefix("codegen_")

    def parse(self, raw: str, base: Path) -> Any:
        """The value of the ini line `raw`; a ValueError says what is wrong with it."""
        try:
            value = self.convert(raw)
        except ValueError:
            raise ValueError(f"invalid {self.convert.__name__} value: {raw!r}") from None
        if self.choices and value not in self.choices:
            raise ValueError(f"invalid choice: {raw!r} (choose from {', '.join(map(repr, self.choices))})")
        if self.path_suffix is not None and value.endswith(self.path_suffix) and not Path(value).is_absolute():
            value = str(base / value)
        return value


PINNED = (
    Pinned("--pipeline", "single", "pipeline", path_suffix=".json"),
    Pinned("--model", None, "model", path_suffix=".gguf"),
    Pinned("--model-server", "embedded", "model_server"),
    Pinned("--feedback", "visible", "feedback", choices=("visible", "hidden")),
    Pinned("--exec-timeout", 10.0, "exec_timeout", float),
    Pinned("--exec-memory", 1024, "exec_memory_mb", int),
    Pinned("--codegen-cache", None, "cache_dir", path_suffix=""),  # also OFF
    Pinned("--codegen-results", None, None, path_suffix=""),
)


def add_ini_keys(parser: pytest.Parser) -> None:
    for pin in PINNED:
        default = "" if pin.default is None else f" (default {pin.default})"
        parser.addini(pin.ini, f"{pin.flag} for every run{default}; the command line overrides it")


def pin_from_ini(config: pytest.Config) -> dict[str, str]:
    """Give each pinned option that the command line left out its ini value, else its default.

    Returns how to name, in messages, each RunSettings field whose value came from the ini file.
    Raises `pytest.UsageError` naming the ini key of a value that does not convert."""
    base = config.inipath.parent if config.inipath else config.rootpath
    names = {}
    for pin in PINNED:
        if config.getoption(pin.dest) is not None:
            continue
        raw = str(config.getini(pin.ini)).strip()
        if pin.dest == "codegen_cache" and config.getoption("no_codegen_cache"):
            raw = ""
        if not raw:
            setattr(config.option, pin.dest, pin.default)
            continue
        where = f"{pin.ini} in {config.inipath.name if config.inipath else 'the ini options'}"
        if pin.dest == "codegen_cache" and raw == OFF:
            config.option.no_codegen_cache = True
        else:
            try:
                setattr(config.option, pin.dest, pin.parse(raw, base))
            except ValueError as error:
                raise pytest.UsageError(f"pytest-codegen: {where}: {error}") from None
        if pin.field is not None:
            names[pin.field] = where
    return names


def pinned_in_ini(config: pytest.Config) -> bool:
    """Does the ini file set any of these keys?"""
    return any(str(config.getini(pin.ini)).strip() for pin in PINNED)
