"""pytest-codegen's own implementations of its hooks (`hookspecs.py`), registered `trylast`.

Backends: with `--model-server URL`, every name goes to that external server; with
`--model-server in-process`, registry models load into each process; by default
(`embedded`), registry models are served by the session's model server, whose URL the
controller hands to each xdist worker. Pipelines: the built-in ones (`pipelines.build_pipeline`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .models import ModelPool
    from .models.registry import ModelSpec
    from .pipelines.genome import Genome
    from .settings import RunSettings

IN_PROCESS = "in-process"
EMBEDDED = "embedded"


def is_external(model_server: str) -> bool:
    return model_server not in (IN_PROCESS, EMBEDDED)


@pytest.hookimpl(trylast=True)
def pytest_codegen_make_backend(
    name: str, spec: ModelSpec | None, settings: RunSettings, pool: ModelPool,
    config: pytest.Config,
) -> Any:
    from .models import factories

    if is_external(settings.model_server):
        return factories.external_backend(name, settings.model_server,
                                          timeout=settings.model_timeout)
    if settings.model_server == IN_PROCESS:
        return factories.in_process_backend(name, spec, pool)
    from .plugin_state import STATE_KEY

    state = config.stash.get(STATE_KEY, None)
    service = state.service if state is not None else None
    url = service.served_url() if service is not None else None
    if service is None or url is None:  # no embedded server for this run: run it here
        return factories.in_process_backend(name, spec, pool)
    return factories.served_backend(name, spec, pool, url, batched=service.batched,
                                    diagnose=service.diagnose)


@pytest.hookimpl(trylast=True)
def pytest_codegen_make_pipeline(
    name: str, settings: RunSettings, sandbox: Any, models: ModelPool | None, genome: Genome | None,
) -> Any:
    from .pipelines import build_pipeline

    return build_pipeline(settings, sandbox, models if genome is not None else None, genome)
