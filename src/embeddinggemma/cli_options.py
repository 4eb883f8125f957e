"""Command-line options shared by every subcommand that loads a model (`embed`, `similarity`, `info`, `eval`).

Each `LoadOption` is one `Embedder.from_pretrained` keyword exposed as a flag; `load_options` gives the
keywords the user set (recorded by `eval` as the run's variant). Another engine option is one more
entry in `LOAD_OPTIONS`, and every subcommand gains it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embeddinggemma.checkpoint import DEFAULT_MODEL

__all__ = ["LOAD_OPTIONS", "LoadOption", "add_model_options", "load_options", "non_negative_int", "positive_int"]


def _int_at_least(text: str, minimum: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse reports anything else as a usage error)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


@dataclass(frozen=True)
class LoadOption:
    """One `Embedder.from_pretrained` keyword as a command-line flag (`None` = not passed)."""

    flag: str
    kwarg: str
    help: str
    choices: tuple[str, ...] | None = None
    type: Callable[[str], Any] | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        extra = {"type": self.type} if self.type is not None else {}
        parser.add_argument(self.flag, dest=self.kwarg, default=None, choices=self.choices, help=self.help, **extra)


LOAD_OPTIONS: tuple[LoadOption, ...] = (
    LoadOption("--device", "device", "cpu, cuda, cuda:1 ... (default: cuda if available)"),
    LoadOption(
        "--dtype",
        "dtype",
        "default: float32 on CPU, bfloat16 on CUDA (float16 is refused: it overflows)",
        ("float32", "bfloat16", "float16"),
    ),
    LoadOption(
        "--quantize", "quantize", "w8a8 | int8 | int4 | mixed | int8-channel: the quantized CPU runtime (w8a8: fastest)"
    ),
    LoadOption(
        "--tokenizer-workers",
        "tokenizer_workers",
        "processes that tokenise big inputs on a GPU (default: automatic, all CPUs but three; 0: never)",
        type=non_negative_int,
    ),
)


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    model_help: str = "hub id or local checkpoint directory",
    max_seq_length_help: str = "token limit (default: the model's 2048)",
) -> None:
    """--model, the `LOAD_OPTIONS` flags and --max-seq-length."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    for option in LOAD_OPTIONS:
        option.add_to(parser)
    parser.add_argument("--max-seq-length", type=positive_int, default=None, help=max_seq_length_help)


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `LOAD_OPTIONS` keywords the user set, for `Embedder.from_pretrained`."""
    return {o.kwarg: getattr(args, o.kwarg) for o in LOAD_OPTIONS if getattr(args, o.kwarg) is not None}
