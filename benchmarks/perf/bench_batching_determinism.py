"""Greedy outputs batched vs one at a time, and the speed of each, through the model server.

    python benchmarks/perf/bench_batching_determinism.py [--problems 32] [--max-tokens 256]
        [--slots 8] [--model qwen-coder-0.5b]

Builds the `single` pipeline's first request for the first N HumanEval problems (temperature
0), then sends them to the embedded model server twice, in one run: decoding one sequence at a
time (`--decode sequential`), and `--slots` requests at once to a server batching that many
sequences. Prints the fraction of prompts whose output is identical, how far the others agree,
and each side's aggregate tokens/s. The model defaults to qwen-coder-0.5b when its file is
here, else gemma-270m. Not run in CI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def default_model() -> str:
    from pytest_codegen.models.registry import Registry

    return Registry().first_present("qwen-coder-0.5b", "gemma-270m")


def requests_for(model: str, count: int, max_tokens: int) -> tuple[list, str]:
    from pytest_codegen import prompts
    from pytest_codegen.datasets.humaneval import load_problems
    from pytest_codegen.models import ModelPool

    mode = ModelPool().registry.resolve(model).mode
    built = [prompts.generation_request(p, mode, policy="visible", temperature=0.0,
                                        max_tokens=max_tokens, seed=0).request
             for p in load_problems()[:count]]
    return built, mode


def run(model: str, path: Path, mode: str, requests: list, *, decode: str, slots: int,
        threads: int | None) -> tuple[list, float]:
    from pytest_codegen.models.embedded import EmbeddedModelServer
    from pytest_codegen.models.openai_backend import OpenAIBackend

    server = EmbeddedModelServer({model: (path, mode)}, slots=slots, decode=decode,
                                 threads=threads)
    try:
        warm = OpenAIBackend(server.url, model, mode=mode, identity="-")  # load outside the timing
        warm.generate(replace(requests[0], max_tokens=1))
        clients = [OpenAIBackend(server.url, model, mode=mode, identity="-") for _ in range(slots)]
        start = time.perf_counter()
        with ThreadPoolExecutor(slots) as pool:
            responses = list(pool.map(lambda ir: clients[ir[0] % slots].generate(ir[1]),
                                      enumerate(requests)))
        seconds = time.perf_counter() - start
    finally:
        server.close()
    return responses, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    from pytest_codegen.models import ModelPool

    model = args.model or default_model()
    path = ModelPool().locate(model)
    requests, mode = requests_for(model, args.problems, args.max_tokens)
    print(f"model {model} ({mode}), {len(requests)} HumanEval prompts, greedy, "
          f"max_tokens {args.max_tokens}, {os.cpu_count()} CPUs")
    alone, t_alone = run(model, path, mode, requests, decode="sequential", slots=1,
                         threads=args.threads)
    batched, t_batched = run(model, path, mode, requests, decode="batched", slots=args.slots,
                             threads=args.threads)
    same = sum(a.text == b.text for a, b in zip(alone, batched))
    agree = [len(os.path.commonprefix([a.text, b.text])) / max(1, len(a.text))
             for a, b in zip(alone, batched) if a.text != b.text]
    tokens_alone = sum(r.completion_tokens for r in alone)
    tokens_batched = sum(r.completion_tokens for r in batched)
    print(f"identical outputs: {same}/{len(requests)} ({same / len(requests):.1%})")
    if agree:
        print(f"the others agree on {sum(agree) / len(agree):.0%} of their text on average "
              f"before diverging")
    print(f"one at a time: {tokens_alone} tokens in {t_alone:.1f} s = {tokens_alone / t_alone:.1f} tok/s")
    print(f"batched x{args.slots}: {tokens_batched} tokens in {t_batched:.1f} s = "
          f"{tokens_batched / t_batched:.1f} tok/s ({t_alone / t_batched:.2f}x the wall-clock speed)")


if __name__ == "__main__":
    main()
