"""What every `trajfactory train ...` command shares: its inputs (a dataset version `DIR[@vN]` or one on the Hub,
`hf:OWNER/NAME[@vN]`; a base model; an output directory), the device and LoRA options, a per-step log, and writing
OUT atomically as a model directory that transformers and vLLM load as it is (weights with LoRA merged, the base
model's tokenizer files verbatim)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trajfactory.datasets.hub_pull import HUB_PREFIX, HubPullError, hub_origin, parse_hub_ref, pull_version
from trajfactory.datasets.store import DatasetStore
from trajfactory.schema import content_hash
from trajfactory.settings import BUILTIN_TINY
from trajfactory.settings.training import TrainSettings

log = logging.getLogger(__name__)

# Files of a model directory that make its tokenizer and chat template; copied verbatim into OUT.
TOKENIZER_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|"
                             r"merges\.txt|chat_template\.(jinja|json)|.*\.model|.*\.tiktoken)$")
# What marks a directory as a training output (ours or a checkpoint), which only `overwrite` replaces.
OUTPUT_MARKERS = ("config.json", "metrics.json", "model.safetensors", "adapter_config.json")


class TrainError(ValueError):
    """A training run that cannot start: names the input that was wrong and what would be right."""


# ---- inputs ---------------------------------------------------------------------------------------------------------

def parse_data_ref(data: str | Path, error: type[ValueError] = TrainError) -> tuple[Path, str | None]:
    """`DIR` or `DIR@vN` -> (dataset directory, version or None for the latest). `hf:OWNER/NAME[@vN]` is pulled
    from the Hugging Face Hub into the cache first (`datasets/hub_pull.py`): (its cached directory, its version);
    a pull that fails raises `error` naming `--data`."""
    text = str(data)
    if text.startswith(HUB_PREFIX):
        try:
            repo_id, version = parse_hub_ref(text)
            return pull_version(repo_id, version)
        except HubPullError as exc:
            raise error(f"--data {exc}") from None
    m = re.fullmatch(r"(.+)@(v\d+)", text)
    return (Path(m.group(1)), m.group(2)) if m else (Path(text), None)


def open_version(data: str | Path, error: type[ValueError] = TrainError
                 ) -> tuple[DatasetStore, str, Callable[[str], list[dict]]]:
    """The store and version that `DIR[@vN]` or `hf:OWNER/NAME[@vN]` names (the latest without `@vN`), and a reader
    of its tables (a table the version lacks reads as no rows). Bad input raises `error` naming `--data`."""
    root, version = parse_data_ref(data, error)
    if not root.is_dir():
        raise error(f"--data {data}: no such dataset directory; give DATASET_ROOT/NAME[@vN] or "
                    f"{HUB_PREFIX}OWNER/NAME[@vN]")
    store = DatasetStore(root)
    versions = store.versions()
    version = version or store.latest()
    if version is None or version not in versions:
        raise error(f"--data {data}: no version {version or '(any)'} in {root}; its versions: "
                    f"{', '.join(versions) or 'none'}")
    tables = store.manifest(version)["tables"]
    return store, version, lambda t: store.read_rows(version, t) if t in tables else []


def data_identity(store: DatasetStore, version: str) -> dict[str, Any]:
    """What identifies a dataset version in metrics.json and report.json; a version pulled from the Hub also names
    its repo, tag and commit (`hub`)."""
    origin = hub_origin(store, version)
    return {"dataset": origin["repo_id"] if origin else store.root.name, "path": str(store.root.resolve()),
            "version": version, "content_digest": store.content_digest(version),
            **({"hub": origin} if origin else {})}


def in_splits(split: str | None, splits: list[str]) -> bool:
    """Whether a row of `split` is among the chosen `splits` (`all`: every split)."""
    return "all" in splits or split in splits


def data_source(store: DatasetStore, version: str, splits: list[str]) -> dict[str, Any]:
    """What identifies the trained-on data in metrics.json."""
    return {**data_identity(store, version), "splits": splits}


def resolve_model(model: str | Path) -> Path:
    """`builtin:tiny` (made on first use) or a model directory with a config.json."""
    if str(model) == BUILTIN_TINY:
        from trajfactory.models.service import tiny_model_dir

        return tiny_model_dir()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise TrainError(f"--model {model}: not a model directory (no config.json); give a directory with "
                         f"config.json, weights and tokenizer, or {BUILTIN_TINY}")
    return path


def model_identity(model: str | Path) -> str:
    """What identifies a base model in a run's key: `builtin:tiny` with its version; a training output by its own
    run key (metrics.json); any other directory by its config and its files' names, sizes and times (hashing the
    weights of a large model would take minutes)."""
    if str(model) == BUILTIN_TINY:
        from trajfactory.models.service import TINY_VERSION

        return f"{BUILTIN_TINY}@v{TINY_VERSION}"
    path = Path(model).expanduser()
    metrics = path / "metrics.json"
    if metrics.is_file():
        key = json.loads(metrics.read_text()).get("run_key")
        if key:
            return f"trained:{key}"
    config = (path / "config.json").read_text() if (path / "config.json").is_file() else ""
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()) \
        if path.is_dir() else []
    return f"dir:{content_hash(config, files, length=32)}"


def run_key(kind: str, content_digest: str, model: str | Path, settings: TrainSettings) -> str:
    """The key of one training run: what it trains on (the data version's content digest), from which model, how.
    A resumed run must have the same key; the recipe's closed loop names its outputs by it."""
    return content_hash(kind, content_digest, model_identity(model), settings.model_dump(mode="json",
                                                                                         exclude={"log_every"}),
                        length=32)


def load_model(path: Path, ref: str | Path, *, dtype: Any = None):
    """The tokenizer and causal LM of a model directory; an error naming the directory when they do not load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
    except Exception as exc:  # any loader failure means: this directory is not a usable model
        raise TrainError(f"--model {ref}: does not load with transformers ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); give a causal LM directory "
                         f"(config.json, weights, tokenizer) or {BUILTIN_TINY}") from None
    return tokenizer, model


def check_out(out: Path, overwrite: bool, model_dir: Path, resume: bool = False) -> None:
    """An output directory may be new or empty; a previous training output is replaced only with `overwrite`, and
    a directory holding anything else is never touched. The checkpoint a killed run left beside OUT
    (`.OUT.partial`) is discarded only with `overwrite`; `resume` goes on from it."""
    if out.resolve() == model_dir.resolve() or out.resolve() in model_dir.resolve().parents:
        raise TrainError(f"--out {out}: it is (or holds) the base model {model_dir}; choose another directory")
    partial = out.with_name(f".{out.name}.partial") / "trainer"
    left = sorted(p.name for p in partial.glob("checkpoint-*") if (p / CHECKPOINT_STATE).is_file()) \
        if partial.is_dir() else []
    if left and not (resume or overwrite):
        raise TrainError(f"--out {out}: a killed run left its checkpoint in {partial.parent} ({', '.join(left)}); "
                         "pass --resume to go on from it (same data, model and settings), or --overwrite to "
                         "discard it")
    if not out.exists():
        return
    if not out.is_dir():
        raise TrainError(f"--out {out}: exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    ours = [e for e in entries if e in OUTPUT_MARKERS or e.startswith("checkpoint-")]
    if not ours:
        raise TrainError(f"--out {out}: not empty and not a training output ({', '.join(entries[:5])} ...); "
                         "choose a new or empty directory")
    if not overwrite:
        raise TrainError(f"--out {out}: already holds a trained model or checkpoint ({', '.join(ours)}); pass "
                         "--overwrite to replace it, or choose another directory")


def cap_max_length(wanted: int, lm) -> int:
    """`max_length`, capped at the model's context (its `max_position_embeddings`) with a log line when it is."""
    context = getattr(lm.config.get_text_config(), "max_position_embeddings", None)
    if context and wanted > context:
        log.warning("max_length %d is beyond the model's context of %d tokens; using %d", wanted, context, context)
        return int(context)
    return wanted


# ---- training options -----------------------------------------------------------------------------------------------

def device_flags(settings: TrainSettings) -> dict[str, Any]:
    """`use_cpu` / `bf16` for the trainer's config: bf16 on where a CUDA GPU supports it unless the settings say."""
    import torch

    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if settings.bf16 and not bf16_ok:
        raise TrainError("--bf16: needs a CUDA GPU with bf16 support; this machine has "
                         f"{'a GPU without bf16' if cuda else 'no CUDA GPU'} (drop --bf16)")
    return {"use_cpu": not cuda, "bf16": bf16_ok if settings.bf16 is None else settings.bf16}


def save_flags(settings: TrainSettings) -> dict[str, Any]:
    """The trainer's checkpoint options: the newest checkpoint every `checkpoint_every` steps, or none."""
    if settings.checkpoint_every is None:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": settings.checkpoint_every, "save_total_limit": 1}


def checkpointing_flag(config_cls, settings: TrainSettings) -> dict[str, bool]:
    """Gradient checkpointing under the name the installed transformers uses (5.x renamed it; the old one warns)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config_cls)}
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: settings.gradient_checkpointing}


def peft_config(settings: TrainSettings):
    """peft's LoraConfig from the settings."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise TrainError("--lora: needs the `peft` package (a declared dependency: run scripts/setup.sh to "
                         "rebuild the environment)") from None
    targets = settings.lora_target_modules
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                      task_type="CAUSAL_LM")


def step_logger(every: int, keep: tuple[str, ...] = ()):
    """A callback that keeps every step's loss (and the logged values named in `keep`) and logs loss and throughput
    every `every` steps."""
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def __init__(self):
            self.steps: list[dict[str, Any]] = []
            self.started = time.monotonic()

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            # A resumed run starts with the steps of its checkpoint: their losses come from the trainer's history.
            self.steps = [{"step": h["step"], "loss": float(h["loss"]), "learning_rate": h.get("learning_rate"),
                           "seconds": None, **{k: float(h[k]) for k in keep if k in h}}
                          for h in state.log_history if "loss" in h and "step" in h]
            if state.global_step:
                log.info("training: resuming at step %d of %d", state.global_step, state.max_steps)
            else:
                log.info("training: %d optimizer steps", state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            seconds = time.monotonic() - self.started
            step = {"step": state.global_step, "loss": float(logs["loss"]),
                    "learning_rate": logs.get("learning_rate"), "seconds": round(seconds, 3)}
            step.update({k: float(logs[k]) for k in keep if k in logs})
            self.steps.append(step)
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                rate = state.num_input_tokens_seen / seconds if seconds > 0 else 0.0
                log.info("step %d/%d: loss %.4f, %.0f tokens/s", state.global_step, state.max_steps,
                         logs["loss"], rate)

    return StepLog()


def quiet_progress_bars() -> None:
    """Off a terminal the loaders' and `datasets`' bars are noise in a log; StepLog and Progress log instead."""
    if not sys.stderr.isatty():
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


# ---- output ---------------------------------------------------------------------------------------------------------

def config_dtype(model_dir: Path):
    """The dtype the base model's config declares (None: leave the weights as trained)."""
    import torch

    cfg = json.loads((model_dir / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return getattr(torch, name, None) if isinstance(name, str) else None


def save_model(trainer, tokenizer, base_dir: Path, original_template, dest: Path, base_dtype) -> None:
    """Weights (LoRA merged, in the base model's dtype) and the base model's tokenizer files, verbatim."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # a peft model: plain weights serve without peft
        model = model.merge_and_unload()
    if base_dtype is not None:
        model = model.to(base_dtype)
    model.config.use_cache = True  # gradient checkpointing turns it off; generation wants it
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.chat_template = original_template
    tokenizer.save_pretrained(dest)
    for f in base_dir.iterdir():
        if f.is_file() and TOKENIZER_FILES.match(f.name):
            shutil.copy2(f, dest / f.name)


RUN_FILE = "run.json"
CHECKPOINT_STATE = "trainer_state.json"  # the trainer writes it last: a checkpoint without it was cut off


def last_complete_checkpoint(trainer_dir: Path) -> str | None:
    """The newest checkpoint the trainer finished writing; the ones a kill cut off are removed."""
    found = sorted((p for p in trainer_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in found:
        if (path / CHECKPOINT_STATE).is_file():
            return str(path)
        log.info("%s was cut off while being written (no %s): removed", path.name, CHECKPOINT_STATE)
        shutil.rmtree(path, ignore_errors=True)
    return None


def partial_dir(out: Path, key: str | None = None, resume: bool = False) -> tuple[Path, str | None]:
    """The sibling directory to write OUT into, and the checkpoint to resume from (None: start fresh).

    With `resume`, a killed run's directory is kept when it was the same run (same `key`: data, model, settings)
    and holds a checkpoint; anything else there is removed."""
    partial = out.with_name(f".{out.name}.partial")
    if resume and key and (partial / RUN_FILE).is_file() and (partial / "trainer").is_dir():
        same = json.loads((partial / RUN_FILE).read_text()).get("run_key") == key
        checkpoint = last_complete_checkpoint(partial / "trainer") if same else None
        if checkpoint:
            log.info("resuming the killed run in %s from %s", partial, Path(checkpoint).name)
            return partial, checkpoint
        log.info("%s holds %s; starting afresh", partial, "no checkpoint" if same else "another run (other data, "
                 "model or settings)")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if key:
        (partial / RUN_FILE).write_text(json.dumps({"run_key": key}) + "\n")
    return partial, None


def replace_dir(partial: Path, out: Path) -> None:
    """Move the finished output into place; an old one (checked by `check_out`) goes only once the new one is whole."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    partial.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def train_and_write(out: Path, build, step_log, describe, *, tokenizer, model_dir: Path, template, lora: bool,
                    title: str, key: str, resume: bool = False, checkpoints: bool = False,
                    curve: tuple[str, str] = ("loss.png", "loss")) -> dict[str, Any]:
    """Train and write OUT atomically: `build(work_dir)` makes the trainer (the per-step log `step_log` is added to it),
    `describe(trainer, result)` the metrics; then the model (`save_model`), metrics.json and the curve (`curve`: the
    PNG's name and the logged value per step it plots, `title` above it) go into a sibling directory that replaces OUT
    only once it is whole. With `checkpoints` a failed or killed run leaves that directory and its newest checkpoint
    behind, for `resume` (same `key`). Returns the metrics."""
    partial, checkpoint = partial_dir(out, key, resume)
    try:
        trainer = build(partial / "trainer")
        trainer.add_callback(step_log)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = {"run_key": key, **describe(trainer, result),
                   "resumed_from_step": int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None}
        shutil.rmtree(partial / "trainer", ignore_errors=True)
        save_model(trainer, tokenizer, model_dir, template, partial, None if lora else config_dtype(model_dir))
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        from trajfactory.training.plot import loss_curve_png

        name, value = curve
        loss_curve_png([(s["step"], s.get(value) or 0.0) for s in step_log.steps], partial / name, title=title)
        (partial / RUN_FILE).unlink(missing_ok=True)
        replace_dir(partial, out)
    except BaseException:
        if checkpoints:
            log.error("training stopped; %s keeps its newest checkpoint: run again with resume to go on", partial)
        else:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("trained model written to %s (%d steps, final loss %s)", out, metrics["training"]["steps"],
             metrics["training"]["final_loss"])
    return metrics
