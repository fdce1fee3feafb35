"""SFT throughput: `trajfactory train sft` in its default configuration against TRL's own defaults and the usual
variations, on one dataset version, each run in a fresh process (so peak memory is its own).

Configurations (all on the same rows, the same number of optimizer steps and the same `max_length`):

- factory: the factory's defaults (assistant-only loss, no gradient checkpointing);
- trl-default: the same with gradient checkpointing on, which TRL's SFTConfig turns on by default;
- loss-all: loss on every token (no assistant mask);
- lora: LoRA adapters (peft, r=16, all linear layers), merged when saved.

Reported per configuration: tokens/s (the tokens the trainer saw, over the optimizer steps' wall time, the first
step excluded as warm-up), seconds per step, peak resident memory of the process, the final loss. On a CUDA GPU it
also prints MFU = achieved model FLOP/s over the GPU's peak dense bf16 FLOP/s, with achieved FLOP/s =
tokens/s x (6 N + 12 L d T) (N parameters without embeddings, L layers, d hidden size, T the mean sequence length:
the PaLM paper's formula, appendix B, the attention term included).

    python bench/train_throughput.py --data trajfactory-out/datasets/trajfactory-swe-demo@v1 --steps 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "factory": {},
    "trl-default": {"gradient_checkpointing": True},
    "loss-all": {"loss": "all"},
    "lora": {"lora": True, "learning_rate": 1e-4},
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
"""Dense bf16 peak of common data-centre GPUs (vendor data sheets, without sparsity)."""


def _one(name: str, data: str, model: str, steps: int, max_length: int, out: str, queue) -> None:
    from trajfactory.settings.training import SFTSettings
    from trajfactory.training.sft import train_sft

    settings = SFTSettings(max_steps=steps, max_length=max_length, log_every=max(1, steps), **CONFIGS[name])
    metrics = train_sft(data, model, Path(out) / name, settings)
    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(metrics)


def run(name: str, args, out: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(name, args.data, args.model, args.steps, args.max_length, out, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"{name}: the training process exited {proc.exitcode}")
    return queue.get()


def warm_rate(training: dict) -> tuple[float, float]:
    """(tokens/s, s/step) over the steps after the first (the first pays for allocation and compilation)."""
    steps = training["loss"]
    if len(steps) < 3:
        return training["tokens_per_s"], training["train_seconds"] / max(1, training["steps"])
    span = steps[-1]["seconds"] - steps[0]["seconds"]
    tokens = training["tokens_trained"] * (len(steps) - 1) / len(steps)
    return tokens / span, span / (len(steps) - 1)


def mfu(metrics: dict, tokens_per_s: float) -> str:
    try:
        import torch
        from transformers import AutoConfig
    except ImportError:
        return "n/a"
    if not torch.cuda.is_available():
        return "n/a (CPU)"
    gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    if peak is None:
        return f"n/a ({gpu}: peak unknown)"
    cfg = AutoConfig.from_pretrained(metrics["model"]["dir"])
    layers, d = cfg.num_hidden_layers, cfg.hidden_size
    n = layers * (4 * d * d + 3 * d * cfg.intermediate_size)  # attention + gated MLP, no embeddings
    seq = metrics["training"]["tokens_trained"] / max(1, metrics["training"]["steps"])
    flops = tokens_per_s * (6 * n + 12 * layers * d * seq)
    return f"{100 * flops / (peak * 1e12):.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset version, DATASET_ROOT/NAME[@vN]")
    parser.add_argument("--model", default="builtin:tiny", help="builtin:tiny or a model directory")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per configuration")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--json", help="write every figure to this file too")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="tf-train-bench-") as out:
        for name in args.configs:
            print(f"training {name} ({args.steps} steps) ...", file=sys.stderr, flush=True)
            metrics = run(name, args, out)
            rate, per_step = warm_rate(metrics["training"])
            rows.append({"config": name, "tokens_per_s": rate, "s_per_step": per_step,
                         "peak_rss_mb": metrics["peak_rss_mb"], "final_loss": metrics["training"]["final_loss"],
                         "rows": metrics["context"].get("rows_used", metrics["context"].get("used")),
                         "device": metrics["training"]["device"], "mfu": mfu(metrics, rate)})
    base = rows[0]["tokens_per_s"] if rows and rows[0]["config"] == "factory" else None
    print(f"\nSFT throughput, {args.model} on {args.data}, {args.steps} steps, max_length {args.max_length}\n")
    print("| config | device | tokens/s | vs factory | s / step | peak RSS MB | final loss | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['config']} | {r['device']} | {r['tokens_per_s']:.0f} | {ratio} | {r['s_per_step']:.3f} | "
              f"{r['peak_rss_mb']:.0f} | {r['final_loss']:.3f} | {r['mfu']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
