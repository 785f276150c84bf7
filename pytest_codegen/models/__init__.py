"""Models by role: names resolved through the registry, loaded once per process, cached."""

from __future__ import annotations

from pathlib import Path

from .backend import GenerationRequest, GenerationResponse, Message, ModelBackend, Mode
from .cache import CachedBackend, GenerationCache

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
        self._backends: dict[str, CachedBackend] = {}

    def locate(self, name: str) -> Path:
        """Resolve and fetch (if allowed) the file behind `name`; raises with what to do."""
        return self.registry.locate(self.registry.resolve(name))

    def get(self, name: str) -> CachedBackend:
        if name not in self._backends:
            from .llama import LlamaCppBackend, file_identity

            spec = self.registry.resolve(name)
            path = self.registry.locate(spec)

            def load() -> ModelBackend:
                return LlamaCppBackend(
                    path, alias=name, mode=spec.mode, n_ctx=self.n_ctx,
                    threads=self.threads, verbose=self.verbose,
                )

            self._backends[name] = CachedBackend(
                name, spec.mode, file_identity(path), load, self.cache
            )
        return self._backends[name]

    @property
    def model_calls(self) -> int:
        return sum(b.calls for b in self._backends.values())

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        if self.cache is not None:
            self.cache.close()
