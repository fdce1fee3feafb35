"""GRPO by generation mode: `train grpo` with `generation: transformers` (in the trainer's process) against
`generation: vllm` (the run's own vLLM server, the trainer's weights reloaded before every step), on one dataset
version's first task, plus generation alone (no sandbox) with each client.

Reported per mode:
- GRPO: wall seconds of the whole run, of the first step (for vllm it includes the server's start) and the mean of
  the later steps (each: the step's episodes in sandboxes, their verification, the optimizer step; for vllm also the
  weight sync), the mean weight-sync seconds, episodes and sampled tokens;
- generation alone: `--turns` agent-like turns of `--gen-tokens` tokens each on one growing episode, tokens/s.

    python bench/grpo_generation.py --data trajfactory-out/datasets/trajfactory-swe-demo@v1 --steps 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def grpo_row(mode: str, data: str, model: str, steps: int, out: Path) -> dict:
    from trajfactory.settings.training import GRPOSettings
    from trajfactory.training.grpo import train_grpo

    settings = GRPOSettings(splits=["all"], max_tasks=1, group_size=2, max_steps=steps, max_agent_steps=2,
                            max_new_tokens=32, learning_rate=1e-4, log_every=1, generation=mode)
    started = time.monotonic()
    metrics = train_grpo(data, model, out / mode, settings)
    wall = time.monotonic() - started
    ends = [s["seconds"] for s in metrics["training"]["per_step"]]
    per_step = [b - a for a, b in zip([0.0] + ends, ends)]
    syncs = [s["seconds"] for s in metrics.get("generation", {}).get("weight_syncs", [])[1:]]
    return {"mode": mode, "steps": len(per_step), "wall_s": wall, "first_step_s": per_step[0],
            "later_step_s": sum(per_step[1:]) / max(1, len(per_step) - 1),
            "sync_s": sum(syncs) / len(syncs) if syncs else None, "episodes": metrics["training"]["episodes"],
            "sampled_tokens": metrics["training"]["sampled_tokens"]}


def generation_rows(model: str, turns: int, tokens: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trajfactory.runtime import run_sync
    from trajfactory.training.common import resolve_model
    from trajfactory.training.local_policy import LocalChatClient
    from trajfactory.training.vllm_policy import VLLMGeneration

    model_dir = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    max_context = turns * (tokens + 64) + 512

    def run(client) -> dict:
        client.start_episode()
        conversation = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "fix wrap()"}]
        started, sampled = time.monotonic(), 0
        for turn in range(turns):
            reply = run_sync(client.chat(conversation, max_tokens=tokens, temperature=1.0, seed=turn))
            sampled += reply.completion_tokens
            conversation += [{"role": "assistant", "content": reply.message.content},
                             {"role": "user", "content": "$ pytest -q\n1 failed, 3 passed"}]
        seconds = time.monotonic() - started
        return {"tokens": sampled, "seconds": seconds, "tokens_s": sampled / seconds}

    rows = [{"mode": "transformers", **run(LocalChatClient(lm, tokenizer, max_context=max_context))}]
    with VLLMGeneration(model_dir, tokenizer, max_context=max_context) as gen:
        gen.sync(lm, 1)
        run(gen.client())  # warm-up
        rows.append({"mode": "vllm", **run(gen.client()), "server_start_s": gen.started_s})
        gen.sync(lm, 2)
        rows[-1]["sync_s"] = gen.syncs[-1]["seconds"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="A dataset version of SWE tasks, DIR@vN")
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--gen-tokens", type=int, default=64)
    args = parser.parse_args()

    fmt = lambda v: "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    gen = generation_rows(args.model, args.turns, args.gen_tokens)
    print("\ngeneration alone (one episode, %d turns x %d tokens)\n" % (args.turns, args.gen_tokens))
    print("| mode | tokens | seconds | tokens/s | server start s | weight sync s |\n|---|---|---|---|---|---|")
    for r in gen:
        print(f"| {r['mode']} | {r['tokens']} | {fmt(r['seconds'])} | {fmt(r['tokens_s'])} | "
              f"{fmt(r.get('server_start_s'))} | {fmt(r.get('sync_s'))} |")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [grpo_row(mode, args.data, args.model, args.steps, Path(tmp)) for mode in ("transformers", "vllm")]
    print(f"\nGRPO, {args.steps} steps of 1 task x 2 episodes (2 agent steps, 32 tokens per turn)\n")
    print("| generation | steps | wall s | first step s | later steps s (mean) | weight sync s (mean) | episodes | "
          "sampled tokens |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['steps']} | {fmt(r['wall_s'])} | {fmt(r['first_step_s'])} | "
              f"{fmt(r['later_step_s'])} | {fmt(r['sync_s'])} | {r['episodes']} | {r['sampled_tokens']} |")


if __name__ == "__main__":
    main()
