"""Run in verl's own environment (scripts/setup-verl.sh): load RL exports with verl's `RLHFDataset` and collate a
batch, as verl's trainer does with `data.train_files` / `data.val_files`. Prints what it saw as JSON.

    python verl_load.py MODEL_DIR RL_DIR CACHE_DIR
"""

import json
import sys

from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

model_dir, rl_dir, cache = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 2048, "filter_overlong_prompts": True,
                           "truncation": "error", "cache_dir": cache})
out = {}
for split in ("train", "validation"):
    dataset = RLHFDataset(data_files=f"{rl_dir}/{split}.parquet", tokenizer=tokenizer, config=config)
    rows = [dataset[i] for i in range(len(dataset))]
    batch = collate_fn(rows)
    out[split] = {
        "rows": len(dataset),
        "data_source": sorted({r["data_source"] for r in rows}),
        "ability": sorted({r["ability"] for r in rows}),
        "roles": sorted({tuple(m["role"] for m in r["raw_prompt"]) for r in rows}),
        "splits": sorted({r["extra_info"]["split"] for r in rows}),
        "task_ids": [r["extra_info"]["task_id"] for r in rows],
        "ground_truth": [json.loads(r["reward_model"]["ground_truth"]) for r in rows],
        "styles": sorted({r["reward_model"]["style"] for r in rows}),
        "batch_keys": sorted(batch),
        "batch_size": len(batch["data_source"]),
    }
print(json.dumps(out))
