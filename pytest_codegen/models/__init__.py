"""Models by role: names resolved through the registry, backends made once per process, cached.

Where a model runs is not decided here: `ModelPool` asks a backend factory (the plugin's
`pytest_codegen_make_backend` hook, whose built-in implementations are in `factories.py`;
outside pytest, the in-process llama.cpp backend) and wraps what it returns in the
generation cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import GenerationRequest, GenerationResponse, Message, Mode, ModelBackend
from .cache import CachedBackend, GenerationCache

if TYPE_CHECKING:
    from ..settings import RunSettings
    from .registry import ModelSpec

__all__ = [
    "BackendFactory",
    "GenerationRequest",
    "GenerationResponse",
    "Message",
    "ModelBackend",
    "Mode",
    "ModelPool",
]

# (name, the registry's entry for it or None when the registry does not know it, the pool)
# -> a backend, or None for "not mine".
BackendFactory = Callable[[str, "ModelSpec | None", "ModelPool"], "ModelBackend | None"]


def _default_factory(name: str, spec: ModelSpec | None, pool: ModelPool) -> ModelBackend | None:
    from .factories import in_process_backend

    return in_process_backend(name, spec, pool)


class ModelPool:
    """One backend per model name, each behind the generation cache.

    Backends are made lazily and load nothing until their first cache miss. Factories may keep
    what several names share (loaded weights) in `shared`; `close` closes every backend once.
    """

    def __init__(
        self,
        *,
        rootdir: Path | None = None,
        cache_dir: str | Path | None = None,
        n_ctx: int = 4096,
        threads: int | None = None,
        verbose: bool = False,
        make_backend: BackendFactory | None = None,
    ) -> None:
        from .registry import Registry

        self.registry = Registry.from_pyproject(rootdir) if rootdir else Registry()
        self.cache = GenerationCache(cache_dir) if cache_dir else None
        self.n_ctx, self.threads, self.verbose = n_ctx, threads, verbose
        self.make_backend: BackendFactory = make_backend or _default_factory
        self.shared: dict[Any, Any] = {}
        self._made: list[ModelBackend] = []
        self._by_name: dict[str, CachedBackend] = {}

    @classmethod
    def from_settings(
        cls,
        settings: RunSettings,
        rootdir: Path | None = None,
        *,
        threads: int | None = None,
        make_backend: BackendFactory | None = None,
    ) -> ModelPool:
        return cls(rootdir=rootdir, cache_dir=settings.cache_dir, n_ctx=settings.n_ctx,
                   threads=threads or settings.threads, verbose=settings.verbose_llama,
                   make_backend=make_backend)

    def locate(self, name: str) -> Path:
        """Resolve and fetch (if allowed) the file behind `name`; raises with what to do."""
        return self.registry.locate(self.registry.resolve(name))

    def get(self, name: str) -> CachedBackend:
        """The backend behind `name`, made on first request."""
        if name not in self._by_name:
            from .registry import UnknownModel

            unknown: UnknownModel | None = None
            try:
                spec: ModelSpec | None = self.registry.resolve(name)
            except UnknownModel as error:
                spec, unknown = None, error
            backend = self.make_backend(name, spec, self)
            if backend is None:
                raise unknown or ValueError(f"no backend serves the model {name!r}")
            self._made.append(backend)
            made: ModelBackend = backend

            def identity() -> str | None:
                return getattr(made, "identity", None)

            self._by_name[name] = CachedBackend(name, made.mode, identity, lambda: made, self.cache)
        return self._by_name[name]

    def close(self) -> None:
        for backend in self._made:
            backend.close()
        self._made.clear()
        for shared in self.shared.values():
            close = getattr(shared, "close", None)
            if close is not None:
                close()
        self.shared.clear()
        if self.cache is not None:
            self.cache.close()
