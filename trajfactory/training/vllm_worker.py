"""A vLLM worker extension that reloads the trainer's weights into the served model (`training/vllm_policy.py`).

The vLLM server of `generation: vllm` starts with `--worker-extension-cls ...WeightLoad`, so its workers gain
`load_weights_from(path)`, which the trainer calls through the server's `/collective_rpc` (vLLM's dev mode). This file
runs in vLLM's own interpreter, copied next to the served model as a module of its own: it imports nothing of
trajfactory.

Why more than vLLM's own `reload_weights` (vLLM 0.32): its layer-wise reload puts the OLD tensors back into a layer
whose checkpoint holds no weights of its own. A model with tied embeddings (the tiny model; small Qwen2 models) saves
no `lm_head.weight`, so the output layer kept the starting weights, and on CPU it also keeps a GEMM handle packed from
them: the served model mixed new and old weights. After the reload the output layer is tied to the new embedding
again and its weights are processed again (on CPU: packed again).
"""

from __future__ import annotations

from pathlib import Path


class WeightLoad:
    """Mixed into vLLM's worker class (`self` is the worker: `reload_weights`, `model_runner`, `vllm_config`)."""

    def load_weights_from(self, path: str) -> int:
        """Reload the served model's weights in place from the `*.safetensors` files in `path`; returns the number
        of parameters of the served model."""
        if not any(Path(path).glob("*.safetensors")):
            raise FileNotFoundError(f"{path}: no *.safetensors file to load")
        self.reload_weights(weights_path=path)
        model = self.model_runner.get_model()
        hf_config = self.vllm_config.model_config.hf_config
        inner = getattr(model, "model", None)
        if getattr(hf_config, "tie_word_embeddings", False) and hasattr(model, "lm_head") and inner is not None:
            head = model.lm_head.tie_weights(inner.embed_tokens)
            head.quant_method.process_weights_after_loading(head)  # on CPU: packs the new weight for its GEMM
        return sum(1 for _ in model.parameters())
