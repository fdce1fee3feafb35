"""`trajfactory model ...`: build the tiny model and serve a model directory with vLLM.

The main CLI mounts this app: `app.add_typer(model_app, name="model")`.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

model_app = typer.Typer(
    help="Models: build the tiny self-made model, serve a model directory with vLLM (OpenAI API).",
    no_args_is_help=True,
)


@model_app.command("init-tiny")
def init_tiny(
    out_dir: Path = typer.Argument(..., help="Directory to write the model into (created if missing)."),
    seed: int = typer.Option(0, help="Random seed of the weights; the same seed gives the same files."),
    vocab_size: int = typer.Option(2048, help="Target BPE vocabulary size (a small corpus yields fewer tokens)."),
) -> None:
    """Build a tiny random-init Qwen2 chat model with a tokenizer trained on the factory's own corpus.

    No model hub is needed: the result loads with transformers and vLLM from OUT_DIR.
    """
    from trajfactory.models.tiny import init_tiny_model

    path = init_tiny_model(out_dir, vocab_size=vocab_size, seed=seed)
    typer.echo(f"tiny model written to {path}")


@model_app.command("serve")
def serve(
    model_dir: Path = typer.Argument(..., help="A local model directory (config.json, weights, tokenizer)."),
    name: str = typer.Option("tiny", help="Model name clients send in requests (`model` field)."),
    port: int | None = typer.Option(None, help="Port to listen on; default: a free one."),
    host: str = typer.Option("127.0.0.1", help="Host of the printed URL: loopback listens on loopback only; an "
                             "address of this machine (that a cluster's nodes reach) listens on every interface."),
    max_model_len: int = typer.Option(1024, help="Longest context, prompt plus completion, in tokens."),
    api_key_env: str = typer.Option(
        "TRAJFACTORY_API_KEY", help="Variable holding the key every request must carry (the clients' `model.api_key_env`"
        "). Beyond loopback a key is always asked: when the variable is unset, a fresh one is made and printed once."),
    python: str | None = typer.Option(
        None,
        help="Python that has vLLM; default: this one on a CUDA box, else .cache/vllm-venv (scripts/setup-vllm.sh).",
    ),
) -> None:
    """Serve MODEL_DIR with vLLM's OpenAI-compatible API until Ctrl-C, then stop it cleanly.

    Prints the base URL once the server answers; point clients at it with
    TRAJFACTORY_BASE_URL=<url> TRAJFACTORY_MODEL=<name>. On loopback no key is asked unless API_KEY_ENV's variable
    is set; on any other --host every request must carry the key (`Authorization: Bearer`).
    """
    import os
    import secrets

    from trajfactory.models.server import VLLMServer, VLLMServerError, is_loopback

    key = os.environ.get(api_key_env) or None
    made = key is None and not is_loopback(host)
    if made:
        key = secrets.token_urlsafe(32)
    server = VLLMServer(model_dir, name=name, port=port, python=python, max_model_len=max_model_len, host=host,
                        api_key=key)
    typer.echo(f"starting vLLM for {model_dir} (a minute or two on CPU) ...")
    try:
        with server:
            typer.echo(f"serving {name!r} at {server.base_url}  (log: {server.log_path}); Ctrl-C stops it")
            if made:
                typer.echo(f"every request must carry this key; on the clients: export {api_key_env}={key}")
            elif key:
                typer.echo(f"every request must carry the key in {api_key_env}")
            while server.running:
                time.sleep(1)
            typer.echo(f"vLLM exited on its own; log tail:\n{server.log_tail()}", err=True)
            raise typer.Exit(1)
    except VLLMServerError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("stopped")
