"""How long the CPU vLLM server takes to answer, with its worker in a process of its own (vLLM's default: the API
server, the engine core and one worker, three interpreters that each import torch and vLLM) against the factory's CPU
default (`models/server.py`: `VLLM_ENABLE_V1_MULTIPROCESSING=0`, the worker inside the engine-core process).

Per round, each way once (alternating, so a slower minute of the machine hits both): the seconds from the start to
the first answer of `/v1/models` (`VLLMServer.start`), then the seconds for `--requests` chat completions of
`--max-tokens` tokens sent at once (that serving is not slower), and the machine CPU seconds the start took
(`/proc/stat`, so run it on a quiet machine). Medians over the rounds, the tiny model.

    python bench/vllm_startup.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from trajfactory.models.server import VLLMServer
from trajfactory.models.tiny import init_tiny_model

from only_commit_cost import machine_cpu  # bench/, beside this script

WAYS = {"three processes (vLLM's default)": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"},
        "worker in the engine core (factory's CPU default)": {}}


async def completions(base_url: str, n: int, max_tokens: int) -> None:
    async with httpx.AsyncClient(timeout=300) as client:
        replies = await asyncio.gather(*(client.post(f"{base_url}/chat/completions", json={
            "model": "tiny", "max_tokens": max_tokens, "temperature": 0.8, "seed": i,
            "messages": [{"role": "user", "content": f"Request {i}: the tests fail; fix the bug."}]}) for i in range(n)))
    bad = [r.status_code for r in replies if r.status_code != 200]
    if bad:
        raise SystemExit(f"vLLM answered {bad}")


def once(model: Path, env: dict, log: Path, requests: int, max_tokens: int) -> tuple[float, float, float]:
    cpu0, t0 = machine_cpu(), time.monotonic()
    with VLLMServer(model, name="tiny", env=env, log_path=log) as server:
        up, cpu = time.monotonic() - t0, machine_cpu() - cpu0
        t1 = time.monotonic()
        asyncio.run(completions(server.base_url, requests, max_tokens))
        serve = time.monotonic() - t1
    return up, cpu, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="starts of each way (default 3)")
    parser.add_argument("--requests", type=int, default=8, help="chat completions sent at once per start (8)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per completion (64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vllm-startup-") as tmp:
        model = init_tiny_model(Path(tmp) / "model")
        once(model, {}, Path(tmp) / "warm.log", 1, 4)  # the first start reads vLLM from disk: not counted
        figures: dict[str, list[tuple[float, float, float]]] = {way: [] for way in WAYS}
        for r in range(args.rounds):
            for way, env in WAYS.items():
                figures[way].append(once(model, env, Path(tmp) / f"{r}.log", args.requests, args.max_tokens))
                print(f"round {r + 1}/{args.rounds} {way}: answers after {figures[way][-1][0]:.1f} s",
                      file=sys.stderr, flush=True)
    print(f"\nCPU vLLM, tiny model, median of {args.rounds} starts; {args.requests} completions of "
          f"{args.max_tokens} tokens at once\n")
    print(f"| {'way':<50} | answers after (s) | machine CPU to start (s) | {args.requests} completions (s) |")
    print(f"|{'-' * 52}|------------------:|-------------------------:|{'-' * (len(str(args.requests)) + 17)}:|")
    for way, rows in figures.items():
        up, cpu, serve = (statistics.median(col) for col in zip(*rows))
        print(f"| {way:<50} | {up:17.1f} | {cpu:24.1f} | {serve:{len(str(args.requests)) + 17}.2f} |")


if __name__ == "__main__":
    main()
