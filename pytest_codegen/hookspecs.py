"""Hooks through which other plugins add model backends and pipelines (via `pytest_addhooks`).

Both are `firstresult`: the first implementation that returns something other than None wins.
The built-in implementations are registered `trylast`, so a plugin's own come first and can
return None for whatever they do not handle. A `conftest.py` or an installed plugin:

    import pytest

    def pytest_codegen_make_backend(name, spec, settings):
        if name == "echo":
            return EchoBackend()          # .alias, .mode, .generate(request), .close()

    def pytest_codegen_make_pipeline(name, settings, models, sandbox):
        if name == "my-pipeline":
            return MyPipeline(models)     # .name, .solve(problem, sample) -> Solution

then `pytest --pipeline=my-pipeline --model=echo`. A backend may have an `identity` attribute
(a string naming the weights and whatever else changes its outputs): the generation cache keys
on it; a backend without one is not cached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .models import ModelBackend, ModelPool
    from .models.registry import ModelSpec
    from .pipelines import Pipeline
    from .pipelines.genome import Genome
    from .sandbox import Sandbox
    from .settings import RunSettings


@pytest.hookspec(firstresult=True)
def pytest_codegen_make_backend(
    name: str, spec: ModelSpec | None, settings: RunSettings, pool: ModelPool,
    config: pytest.Config,
) -> ModelBackend | None:
    """A backend for the model `name`, or None to leave it to other implementations.

    `spec` is the registry's entry for `name` (None when the registry does not know it); `pool`
    is the `ModelPool` asking (its `registry`, `n_ctx`, `threads`, and `shared`, where
    backends of several names may keep what they share). Called once per name and process,
    lazily; the backend should load nothing before its first `generate`.
    """


@pytest.hookspec(firstresult=True)
def pytest_codegen_make_pipeline(
    name: str, settings: RunSettings, sandbox: Sandbox, models: ModelPool | None,
    genome: Genome | None, config: pytest.Config,
) -> Pipeline | None:
    """The pipeline for `--pipeline=name`, or None to leave it to other implementations.

    `genome` is the parsed genome of a built-in model pipeline (None for other names); `models`
    gives backends by name (`models.get(name).generate(request)`), through the cache (None
    for the built-in pipelines that call no model, when no plugin implements this hook).
    """


def plugin_implements(config: pytest.Config, hook_name: str) -> bool:
    """Has a plugin other than pytest-codegen's built-ins implemented `hook_name`?"""
    hook: Any = getattr(config.hook, hook_name)
    builtin = config.pluginmanager.get_plugin(BUILTINS_NAME)
    return any(impl.plugin is not builtin for impl in hook.get_hookimpls())


BUILTINS_NAME = "codegen-builtins"
