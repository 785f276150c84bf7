"""A scripted stand-in for a language model, for tests of pipeline logic and report numbers.

The real llama-cpp-python path has its own tests (test_llama_real.py); this fake only makes
the control flow and the arithmetic of the tables checkable to the exact number.
"""

from __future__ import annotations

from collections.abc import Callable

from pytest_codegen.models.backend import GenerationRequest, GenerationResponse


class ScriptedBackend:
    def __init__(self, alias: str, script: Callable[[str], str], mode: str = "chat") -> None:
        self.alias = alias
        self.mode = mode
        self.identity = f"scripted:{alias}"
        self.script = script
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        self.requests.append(request)
        text = request.prompt if request.prompt is not None else request.messages[-1].content
        reply = self.script(text)
        return GenerationResponse(reply, len(text.split()), len(reply.split()), 0.001)

    def close(self) -> None:
        pass


class FakeModels:
    """Stands in for ModelPool: name → scripted backend."""

    def __init__(self, **backends: ScriptedBackend) -> None:
        self.backends = backends

    def get(self, name: str) -> ScriptedBackend:
        return self.backends[name]

    def close(self) -> None:
        pass


def fenced(code: str) -> str:
    return f"Here is the code:\n```python\n{code}```\n"
