"""Where a session's models run, decided once: the plugin's glue to `models/`.

- `embedded` (default): the controller (or the only process, without xdist) owns an
  `EmbeddedModelServer` serving every model the pipeline names; it starts when the first
  worker is configured (or the first backend is made), and its URL reaches the workers through
  xdist's `workerinput`. One copy of each model per machine, all workers' requests batched.
- an external URL (`--model-server URL`): every process talks to that server; nothing starts.
- `in-process` (`--model-server in-process`): each process loads its own copy and decodes one
  sequence at a time with `cores // workers` threads, as before the model server existed.

Thread counts come from `workerinput["workercount"]` (never from environment variables):
in-process backends split the cores between workers; the embedded server, the only process
running llama.cpp, uses them all unless `--threads` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .builtin_hooks import EMBEDDED, IN_PROCESS, is_external

if TYPE_CHECKING:
    from .models import ModelPool
    from .models.embedded import EmbeddedModelServer
    from .pipelines.genome import Genome
    from .settings import RunSettings

URL_KEY = "codegen_model_server"
ERROR_KEY = "codegen_model_server_error"
PID_KEY = "codegen_model_server_pid"
LOG_KEY = "codegen_model_server_log"
BATCHED_KEY = "codegen_model_server_batched"
MAX_SLOTS = 64


def check_model_server(value: str, option: str = "--model-server") -> None:
    """`--model-server` (or the ini key `option`): embedded, in-process or an http(s) URL; a
    ValueError otherwise."""
    if value in (EMBEDDED, IN_PROCESS) or value.startswith(("http://", "https://")):
        return
    raise ValueError(f"{option} {value!r}: expected 'embedded', 'in-process' or the base "
                     "URL of an OpenAI-compatible server (http://HOST:PORT/v1)")


@dataclass
class ModelService:
    kind: str  # EMBEDDED, IN_PROCESS or "external"
    workers: int = 1  # xdist workers (1 without xdist)
    server: EmbeddedModelServer | None = None  # the controller's, embedded only
    url: str | None = None  # a worker's: what the controller handed over
    error: str | None = None
    pid: int | None = None
    log: str | None = None  # a worker's: the embedded server's log file, for diagnoses
    batched: bool = True  # the embedded server decodes several sequences together

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_controller(
        cls, settings: RunSettings, genome: Genome | None, pool_factory: Any, workers: int,
    ) -> ModelService:
        """The controller's (or only process's) service; for `embedded`, a server not yet
        started that will serve every model of `genome` whose file is here."""
        if is_external(settings.model_server):
            return cls("external", workers)
        if settings.model_server == IN_PROCESS or genome is None:
            return cls(settings.model_server if genome is not None else IN_PROCESS, workers)
        from .models.embedded import EmbeddedModelServer

        models = served_models(pool_factory(), sorted(genome.models()))
        if not models:
            return cls(IN_PROCESS, workers)  # nothing here to serve: the error comes per item
        slots = settings.model_slots or min(MAX_SLOTS, max(1, workers))
        server = EmbeddedModelServer(
            models, n_ctx=settings.n_ctx, threads=settings.threads, slots=slots,
            decode=settings.decode, verbose=settings.verbose_llama,
            start_timeout=settings.model_timeout)
        return cls(EMBEDDED, workers, server=server,
                   batched=settings.decode != "sequential" and slots > 1)

    @classmethod
    def for_worker(cls, settings: RunSettings, workerinput: dict[str, Any]) -> ModelService:
        workers = int(workerinput.get("workercount", 1) or 1)
        url, error = workerinput.get(URL_KEY), workerinput.get(ERROR_KEY)
        kind = settings.model_server
        if kind == EMBEDDED and url is None and error is None:
            kind = IN_PROCESS  # the controller serves nothing for this run
        return cls("external" if is_external(kind) else kind, workers, url=url, error=error,
                   pid=workerinput.get(PID_KEY), log=workerinput.get(LOG_KEY),
                   batched=bool(workerinput.get(BATCHED_KEY, True)))

    # ------------------------------------------------------------------ use

    def served_url(self) -> str | None:
        """The embedded server's URL (starting it, in the controller); None: not embedded."""
        from .models.openai_backend import ModelServerError

        if self.kind != EMBEDDED:
            return None
        if self.error is not None:
            raise ModelServerError(self.error)
        if self.url is not None:
            return self.url
        if self.server is None:
            return None
        url = self.server.url
        self.pid = self.server.pid
        return url

    def hand_to_worker(self, workerinput: dict[str, Any]) -> None:
        """xdist's `pytest_configure_node`: start the server if needed and pass it on."""
        from .models.openai_backend import ModelServerError

        if self.kind != EMBEDDED or self.server is None:
            return
        workerinput[LOG_KEY] = str(self.server.log_path)
        workerinput[BATCHED_KEY] = self.batched
        try:
            workerinput[URL_KEY] = self.server.url  # raises once the server is gone for good
            workerinput[PID_KEY] = self.server.pid
        except ModelServerError as error:
            workerinput[ERROR_KEY] = str(error)

    def diagnose(self) -> str:
        """What is known about the embedded server's failure: its saved error, or the end
        of its log (a worker reads the controller's server's log file)."""
        if self.server is not None:
            return self.server.diagnosis()
        if self.log is None:
            return ""
        from .models.embedded import read_log_tail

        tail = read_log_tail(Path(self.log))
        return f"its log ends: {tail}" if tail else ""

    def in_process_threads(self, settings: RunSettings) -> int:
        from .models.llama import default_threads

        return settings.threads or default_threads(self.workers)

    def describe(self, settings: RunSettings) -> str:
        if self.kind == "external":
            return f"models: external server {settings.model_server}"
        if self.kind == EMBEDDED and self.server is not None:
            how = ("sequential decoding" if settings.decode == "sequential"
                   else f"{self.server.slots} sequences batched" if self.batched
                   else "one sequence at a time")
            return f"models: one embedded server for the session ({how})"
        return "models: in-process (each process loads its own copy)"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def served_models(pool: ModelPool, names: list[str]) -> dict[str, tuple[Path, str]]:
    """name -> (file, mode) for the names whose files are here (or fetched for named models
    already); the rest are left to the per-item error of the backend that needs them."""
    from .models.registry import ModelNotAvailable, UnknownModel

    found: dict[str, tuple[Path, str]] = {}
    for name in names:
        try:
            spec = pool.registry.resolve(name)
            if not pool.registry.is_present(spec):
                continue
            found[name] = (pool.registry.locate(spec, download=False), spec.mode)
        except (UnknownModel, ModelNotAvailable, ValueError, OSError):
            continue
    return found
