"""Models by role: names resolved through the registry, loaded once per process, cached."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .backend import GenerationRequest, GenerationResponse, Message, ModelBackend, Mode
from .cache import CachedBackend, GenerationCache

if TYPE_CHECKING:
    from ..settings import RunSettings

__all__ = [
    "GenerationRequest",
    "GenerationResponse",
    "Message",
    "ModelBackend",
    "Mode",
    "ModelPool",
]


class ModelPool:
    """One backend per distinct model: a generator and refiner of the same name share weights."""

    def __init__(
        self,
        *,
        rootdir: Path | None = None,
        cache_dir: str | Path | None = None,
        n_ctx: int = 4096,
        threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        from .registry import Registry

        self.registry = Registry.from_pyproject(rootdir) if rootdir else Registry()
        self.cache = GenerationCache(cache_dir) if cache_dir else None
        self.n_ctx, self.threads, self.verbose = n_ctx, threads, verbose
        self._backends: dict[tuple[str, str], CachedBackend] = {}  # by (file, mode)
        self._by_name: dict[str, CachedBackend] = {}

    @classmethod
    def from_settings(cls, settings: RunSettings, rootdir: Path | None = None) -> ModelPool:
        return cls(rootdir=rootdir, cache_dir=settings.cache_dir, n_ctx=settings.n_ctx,
                   threads=settings.threads, verbose=settings.verbose_llama)

    def locate(self, name: str) -> Path:
        """Resolve and fetch (if allowed) the file behind `name`; raises with what to do."""
        return self.registry.locate(self.registry.resolve(name))

    def get(self, name: str) -> CachedBackend:
        """The backend behind `name`; names that resolve to the same file share one."""
        if name not in self._by_name:
            from .llama import LlamaCppBackend, file_identity

            spec = self.registry.resolve(name)
            path = self.registry.locate(spec)
            key = (str(path.resolve()), spec.mode)
            if key not in self._backends:
                def load() -> ModelBackend:
                    return LlamaCppBackend(
                        path, alias=name, mode=spec.mode, n_ctx=self.n_ctx,
                        threads=self.threads, verbose=self.verbose,
                    )

                # The context size and the llama.cpp build change what is generated (a short
                # context truncates max_tokens; builds differ numerically): both key the cache.
                identity = f"{file_identity(path)}:ctx{self.n_ctx}:{_llama_build()}"
                self._backends[key] = CachedBackend(name, spec.mode, identity, load, self.cache)
            self._by_name[name] = self._backends[key]
        return self._by_name[name]

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        if self.cache is not None:
            self.cache.close()


def _llama_build() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "llama-cpp-python-" + version("llama-cpp-python")
    except PackageNotFoundError:
        return "llama-cpp-python-unknown"
