"""`embeddinggemma serve`: load the model, bind the port, run uvicorn until SIGTERM/SIGINT, drain, exit 0."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embeddinggemma.cli_options import add_model_options, load_options, positive_int
from embeddinggemma.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

API_KEY_ENV = "EMBEDDINGGEMMA_API_KEY"
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


class ServeUsageError(ValueError):
    """Bad `serve` input; `embeddinggemma.cli.main` prints it as one line."""


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `serve` on the main parser's subcommands."""
    defaults = ServeSettings()
    parser = subparsers.add_parser(
        "serve",
        help="HTTP embedding server: OpenAI /v1/embeddings, TEI /embed, /health, /info, /metrics",
        description="Serve embeddings over HTTP with dynamic batching. Binds 127.0.0.1 unless told otherwise; "
        f"API keys come from --api-key or ${API_KEY_ENV} (comma-separated).",
    )
    add_model_options(parser)
    parser.add_argument(
        "--num-threads", type=positive_int, default=None, help="PyTorch threads (default: PyTorch's choice)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)")
    parser.add_argument("--served-model-name", default=None, help="the `model` id clients send (default: --model)")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="tokens per engine call (default: 2048 on CPU, 16384 on CUDA); smaller batches answer sooner",
    )
    parser.add_argument(
        "--max-client-batch-size",
        type=int,
        default=defaults.max_client_batch_size,
        help=f"inputs per request (default: {defaults.max_client_batch_size})",
    )
    parser.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=defaults.max_concurrent_requests,
        help=f"requests in progress before 429 (default: {defaults.max_concurrent_requests})",
    )
    parser.add_argument(
        "--max-queue-tokens",
        type=int,
        default=defaults.max_queue_tokens,
        help=f"tokens waiting for the model before 429 (default: {defaults.max_queue_tokens:,})",
    )
    parser.add_argument(
        "--payload-limit",
        type=int,
        default=defaults.payload_limit,
        help=f"request body bytes (default: {defaults.payload_limit:,})",
    )
    parser.add_argument(
        "--default-task",
        default=defaults.default_task,
        help="prompt for requests without task/prompt_name or titles: query (default), document, sts, ... "
        "or none for no prompt",
    )
    parser.add_argument(
        "--auto-truncate", action="store_true", help="cut over-long inputs unless a request says truncate=false"
    )
    parser.add_argument(
        "--allow-untrained-dimensions",
        action="store_true",
        help="accept any `dimensions` from 1 to the full size (warning header) instead of only 768/512/256/128",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=None,
        help=f"accepted Bearer token (repeatable); prefer ${API_KEY_ENV}: flags show in process lists",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=None,
        help="on SIGTERM, seconds to wait for in-flight requests (default: wait for all of them)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    parser.add_argument(
        "--index",
        type=Path,
        default=None,
        metavar="DB",
        help="also serve this index (`embeddinggemma index`): POST /search and a search page at /; "
        "it must have been built with --model",
    )
    parser.set_defaults(func=cmd_serve)
    return parser


def settings_from_args(args: argparse.Namespace, device_type: str) -> ServeSettings:
    keys = list(args.api_key or [])
    keys += [key.strip() for key in os.environ.get(API_KEY_ENV, "").split(",") if key.strip()]
    default_task = None if args.default_task.lower() == "none" else args.default_task
    return ServeSettings(
        model_name=args.served_model_name or str(args.model),
        max_batch_tokens=DEFAULT_BATCH_TOKENS.get(device_type, 2048)
        if args.max_batch_tokens is None
        else args.max_batch_tokens,
        max_client_batch_size=args.max_client_batch_size,
        max_concurrent_requests=args.max_concurrent_requests,
        max_queue_tokens=args.max_queue_tokens,
        payload_limit=args.payload_limit,
        default_task=default_task,
        auto_truncate=args.auto_truncate,
        allow_untrained_dimensions=args.allow_untrained_dimensions,
        api_keys=tuple(keys),
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen before the model loads, so a taken port fails in a second, not after a minute of loading."""
    if not 0 <= port <= 65535:
        raise ServeUsageError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServeUsageError(f"--host {host!r} does not resolve ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeUsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or stop what uses it"
        ) from None
    sock.listen(2048)
    return sock


def _uvicorn_server():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully, so the process would die of the
        signal (status 143); after a complete drain the exit is clean, so the handlers are only restored."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return uvicorn, DrainingServer


def _check_installed() -> None:
    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
    if missing:
        raise ServeUsageError(f"the server needs {', '.join(missing)}: pip install 'embeddinggemma[serve]'")


def _check_default_task(model: str, task: str | None) -> None:
    """Before the weights load: the task must be in our table or the checkpoint's (config files only)."""
    from embeddinggemma.checkpoint import read_checkpoint_info, resolve_checkpoint
    from embeddinggemma.prompts import PromptTable, UnknownTaskError

    if task is None:
        return
    info, _ = read_checkpoint_info(resolve_checkpoint(model))
    table = PromptTable(info.prompts)
    try:
        table[task]
    except UnknownTaskError:
        raise ServeUsageError(
            f"--default-task {task!r} is unknown; use none or one of {', '.join(sorted(table))}"
        ) from None


def _check_index(path: Path) -> None:
    """Before the weights load: the file is a finished index (the model check needs the model: later)."""
    from embeddinggemma.index.searcher import Searcher  # searching needs no package of the index extra

    Searcher(path).close()


def cmd_serve(args: argparse.Namespace) -> int:
    from embeddinggemma.embedder import Embedder, resolve_device

    _check_installed()
    device_type = resolve_device(args.device).type
    settings = settings_from_args(args, device_type)  # refuses bad limits before anything is loaded
    if not settings.api_keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without an API key: anyone who reaches this address can use it", args.host)
    if args.index is not None:
        _check_index(args.index)
    sock = bind_socket(args.host, args.port)
    searcher = None
    try:
        _check_default_task(args.model, settings.default_task)
        options = load_options(args)
        embedder = Embedder.from_pretrained(
            args.model, max_seq_length=args.max_seq_length, num_threads=args.num_threads, **options
        )
        if args.index is not None:
            from embeddinggemma.index.searcher import Searcher

            searcher = Searcher(args.index, embedder)  # refuses an index built with another model
        from embeddinggemma.serve.app import create_app

        app = create_app(embedder, settings, searcher=searcher)
        uvicorn, server_class = _uvicorn_server()
        config = uvicorn.Config(
            app,
            log_level="info",
            access_log=args.access_log,
            timeout_graceful_shutdown=args.graceful_timeout,
            lifespan="on",
        )
        server = server_class(config)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(
            f"serving {settings.model_name} on http://{shown}:{port} ({embedder.device}, "
            f"{str(embedder.dtype).removeprefix('torch.')}, default task: {settings.default_task or 'none'})",
            file=sys.stderr,
            flush=True,
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
        if searcher is not None:
            searcher.close()
    if not server.started:
        print("embeddinggemma serve: error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return 0
