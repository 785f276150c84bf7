"""The Hugging Face Hub as a source of model files (see `registry.Registry.locate`).

A file already in the local Hugging Face cache is found without any request. A download is
preceded by one bounded request, so that an unreachable Hub fails within seconds instead of
huggingface_hub's own retries (about 25 s), and a downloaded file that fails the model's pin is
deleted. Every failure is a `HubUnavailable` whose `reason` completes "not available: ...".
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from .mirror import Pin

__all__ = ["DEFAULT_PROBE_TIMEOUT", "Hub", "HubUnavailable", "describe_error", "env_true", "hub_offline"]

# How long the one metadata request made before a download may take. Without it, an unreachable
# Hub costs ~25 s: huggingface_hub retries five times with backoff before giving up.
DEFAULT_PROBE_TIMEOUT = 5.0

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub reads HF_HUB_OFFLINE


class HubUnavailable(Exception):
    """The file cannot be had from the Hub; `reason` says why, for the registry's message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def env_true(name: str) -> bool:
    """An environment flag set the way huggingface_hub reads HF_HUB_OFFLINE (1, ON, YES, TRUE)."""
    return os.environ.get(name, "").upper() in _TRUE_VALUES


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, now or when huggingface_hub was imported."""
    if env_true("HF_HUB_OFFLINE") or env_true("TRANSFORMERS_OFFLINE"):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def describe_error(exc: BaseException) -> str:
    """`ExcType: first line of its message`."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Hub:
    """One Hub endpoint (None: huggingface_hub's default) and local cache directory."""

    def __init__(self, cache_dir: Path, endpoint: str | None, probe_timeout: float | None = None) -> None:
        self.cache_dir = cache_dir
        self.endpoint = endpoint
        self.probe_timeout = probe_timeout

    def cached(self, repo_id: str, filename: str) -> Path | None:
        """The file in the local cache, or None. Never uses the network."""
        # try_to_load_from_cache is the lookup hf_hub_download(local_files_only=True) does, minus
        # building request headers, which in recent huggingface_hub versions makes a request
        # of its own (agent detection) unless HF_HUB_OFFLINE was set at import.
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, filename, cache_dir=self.cache_dir)
        return Path(path).absolute() if isinstance(path, str) else None

    def download(self, repo_id: str, filename: str, pin: Pin | None) -> Path:
        """Download the file into the cache and check it against `pin`."""
        if hub_offline():
            raise HubUnavailable("HF_HUB_OFFLINE is set, so the Hub is not asked")

        import huggingface_hub as hub

        # One bounded request first: hf_hub_download itself retries with backoff for ~25 s
        # when the Hub is unreachable, and cannot be told not to.
        self._probe(repo_id, filename)
        try:
            path = Path(hub.hf_hub_download(repo_id, filename, cache_dir=self.cache_dir,
                                            endpoint=self.endpoint)).absolute()
        except Exception as exc:  # network, HTTP, disk: all end as "not available", chained
            raise HubUnavailable(f"the download failed: {describe_error(exc)}") from exc
        failure = pin.check(path) if pin else None
        if failure is not None:
            blob = path.resolve()
            path.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            raise HubUnavailable(f"the downloaded file is not the official one ({failure}); it was deleted")
        return path

    def _probe(self, repo_id: str, filename: str) -> None:
        import huggingface_hub as hub
        from huggingface_hub.utils import (  # re-exported there by every huggingface_hub >= 0.2x
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
        )

        timeout = self.probe_timeout
        if timeout is None:
            env_timeout = os.environ.get("HF_HUB_ETAG_TIMEOUT", "")
            timeout = float(env_timeout) if env_timeout.isdigit() else DEFAULT_PROBE_TIMEOUT
        endpoint = self.endpoint
        url = hub.hf_hub_url(repo_id, filename, endpoint=endpoint)
        outcome: list[BaseException | None] = []

        def request() -> None:
            try:
                try:
                    hub.get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint, retry_on_errors=False)
                except TypeError:  # a huggingface_hub without retry_on_errors (it does not retry there)
                    hub.get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                outcome.append(exc)

        # A thread, because the HTTP timeout does not cover name resolution, which can hang.
        worker = threading.Thread(target=request, name="pytest-codegen-hub-probe", daemon=True)
        worker.start()
        worker.join(timeout + 2.0)
        where = endpoint or "https://huggingface.co"
        if not outcome:
            raise HubUnavailable(f"{where} did not answer within {timeout + 2.0:.0f} s (no network?)")
        exc = outcome[0]
        if exc is None:
            return
        if isinstance(exc, GatedRepoError):
            reason = f"{repo_id} is gated: accept its license on the Hub and log in (`hf auth login` or HF_TOKEN)"
        elif isinstance(exc, RepositoryNotFoundError):
            reason = f"the Hub has no repository {repo_id!r} (or it is private: log in with `hf auth login`)"
        elif isinstance(exc, EntryNotFoundError):
            reason = f"the repository {repo_id!r} has no file {filename!r}"
        elif isinstance(exc, HfHubHTTPError):
            reason = f"the Hub answered with an error: {describe_error(exc)}"
        elif isinstance(exc, Exception):
            reason = f"cannot reach {where} ({describe_error(exc)})"
        else:
            raise exc
        raise HubUnavailable(reason) from exc
