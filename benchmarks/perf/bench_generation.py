"""Generation speed through the pipeline against a plain llama-cpp-python loop, same run.

    python benchmarks/perf/bench_generation.py [--problems 5] [--max-tokens 128]
        [--other-python /path/to/venv-with-another-build/bin/python]

Both sides use the same model file (gemma-270m by default), the same HumanEval prompts, greedy
decoding and the same thread count; the pipeline side goes through the registry, the
`single` genome, prompt building, code extraction and the sandbox, with the generation cache
off. The ratio pipeline/plain is the overhead of this project (target >= 0.95).

`--other-python` runs the plain loop in another interpreter, e.g. a venv holding a
llama-cpp-python built another way (CMAKE_ARGS), to compare the installed build with it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PLAIN_LOOP = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, max_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompts, repack = json.loads(sys.argv[4]), sys.argv[5] == "1"
import llama_cpp.llama_cpp as c
defaults = c.llama_model_default_params
def params():
    p = defaults(); p.use_extra_bufts = repack; return p
c.llama_model_default_params = params
llm = Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
tokens, start = 0, time.perf_counter()
for prompt in prompts:
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, seed=0)
    tokens += out["usage"]["completion_tokens"]
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - start}))
"""


def plain_loop(python: str, path: Path, threads: int, max_tokens: int, prompts: list[str], repack: bool) -> float:
    out = subprocess.run(
        [python, "-c", PLAIN_LOOP, str(path), str(threads), str(max_tokens), json.dumps(prompts),
         "1" if repack else "0"],
        check=True, capture_output=True, text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["tokens"] / result["seconds"]


def pipeline_loop(model: str, threads: int, max_tokens: int, problems) -> float:
    from pytest_codegen.models import ModelPool
    from pytest_codegen.pipelines import build_pipeline
    from pytest_codegen.sandbox import Sandbox
    from pytest_codegen.settings import RunSettings

    settings = RunSettings(pipeline="single", model=model, temperature=0.0, max_tokens=max_tokens,
                           threads=threads)
    with Sandbox() as sandbox:
        pool = ModelPool(threads=threads)  # no cache: every request reaches the model
        pipeline = build_pipeline(settings, sandbox, pool)
        pipeline.solve(problems[0], sample=99)  # load the model outside the timing
        tokens, start = 0, time.perf_counter()
        for problem in problems:
            solution = pipeline.solve(problem, 0)
            tokens += sum(r.completion_tokens for r in solution.rounds)
        seconds = time.perf_counter() - start
        pool.close()
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-270m")
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--other-python", help="interpreter with another llama-cpp-python build")
    args = parser.parse_args()

    from pytest_codegen.datasets import humaneval
    from pytest_codegen.models import ModelPool

    problems = list(humaneval.load_problems()[: args.problems])
    path = ModelPool().locate(args.model)
    prompts = [p.prompt for p in problems]  # a base model's single-pipeline prompt is the stub

    pipeline_tps = pipeline_loop(args.model, args.threads, args.max_tokens, problems)
    plain_tps = plain_loop(sys.executable, path, args.threads, args.max_tokens, prompts, repack=False)
    plain_repack_tps = plain_loop(sys.executable, path, args.threads, args.max_tokens, prompts, repack=True)
    print(f"model {path.name}, {len(problems)} HumanEval prompts, {args.max_tokens} max tokens, "
          f"{args.threads} threads")
    print(f"plain llama-cpp-python loop (repacking off): {plain_tps:7.1f} tok/s")
    print(f"plain llama-cpp-python loop (repacking on):  {plain_repack_tps:7.1f} tok/s")
    print(f"through the single pipeline:                 {pipeline_tps:7.1f} tok/s")
    print(f"ratio pipeline / plain (same load params):   {pipeline_tps / plain_tps:7.3f}  (target >= 0.95)")
    if args.other_python:
        other = plain_loop(args.other_python, path, args.threads, args.max_tokens, prompts, repack=False)
        other_repack = plain_loop(args.other_python, path, args.threads, args.max_tokens, prompts, repack=True)
        print(f"other build ({args.other_python}): {other:.1f} tok/s repacking off, "
              f"{other_repack:.1f} tok/s repacking on")
        print(f"ratio installed / other build (repacking off): {plain_tps / other:.3f}")


if __name__ == "__main__":
    main()
