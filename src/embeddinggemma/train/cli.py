"""The ``train``, ``soup`` and ``student`` subcommands of ``embeddinggemma`` (registered in ``embeddinggemma.cli``).

    embeddinggemma train RECIPE [KEY=VALUE ...]        e.g. train finetune-code optim.lr=2e-5 train.steps=50
    embeddinggemma train RECIPE --print                the resolved recipe as YAML, nothing trained
    torchrun --nproc-per-node 8 -m embeddinggemma.cli train RECIPE    data parallel (each rank runs this)
    embeddinggemma soup CKPT CKPT ... -o OUT [--weights 1 2 ...]
    embeddinggemma student CKPT --layers 12 -o OUT     a shallower copy to distil into (train/student.py)
    embeddinggemma adapt RECIPE [KEY=VALUE ...]        UL2 adaptation of a Gemma 3 decoder (train/ul2.py)

Only argparse is imported here: torch and the trainer load inside the handlers, so ``embeddinggemma
--help`` stays fast. Bad recipes and incompatible checkpoints are ``ValueError``s, which the main entry
point prints as one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

__all__ = [
    "add_adapt_parser",
    "add_soup_parser",
    "add_student_parser",
    "add_train_parser",
    "cmd_adapt",
    "cmd_soup",
    "cmd_student",
    "cmd_train",
]


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "train",
        help="train with a recipe (YAML) and dotted overrides",
        description="Train with a recipe: a YAML file, or the name of a recipe shipped in embeddinggemma/recipes/.",
    )
    parser.add_argument("recipe", help="recipe file or shipped name, e.g. finetune-code or my-recipe.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-5 train.steps=100")
    parser.add_argument("--print", action="store_true", help="print the resolved recipe and exit")
    parser.set_defaults(func=cmd_train)
    return parser


def add_soup_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "soup",
        help="average fine-tuned checkpoints (model souping)",
        description="Uniform or weighted parameter average of compatible checkpoints (paper section 2).",
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint directories or hub ids")
    parser.add_argument("-o", "--output", required=True, help="new directory for the souped checkpoint")
    parser.add_argument("--weights", nargs="+", type=float, help="one positive weight per checkpoint (normalised)")
    parser.set_defaults(func=cmd_soup)
    return parser


def add_student_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "student",
        help="cut a checkpoint to k of its layers (local/global pattern kept) to distil into",
        description="Write a shallower student initialised from the checkpoint's own layers; train it with a "
        "recipe's model.checkpoint=OUT, or set model.student_layers in the recipe instead.",
    )
    parser.add_argument("checkpoint", help="teacher checkpoint directory or hub id")
    parser.add_argument("--layers", type=int, required=True, help="layers to keep, e.g. 12 of 24")
    parser.add_argument("-o", "--output", required=True, help="new directory for the student")
    parser.set_defaults(func=cmd_student)
    return parser


def add_adapt_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "adapt",
        help="UL2-adapt a Gemma 3 decoder into an encoder-decoder (the encoder-decoder initialisation)",
        description="Train a T5Gemma-style encoder-decoder built from a Gemma 3 decoder on the UL2 mixture "
        "(recipe: a YAML file or a name from recipes/, e.g. ul2-gemma3-270m). Its output directory is what "
        "an embedding recipe's model.init=encoder-decoder reads (model.init_from).",
    )
    parser.add_argument("recipe", help="UL2 recipe file or name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.steps=100 model.layers=6")
    parser.add_argument("--print", action="store_true", help="print the resolved recipe and exit")
    parser.set_defaults(func=cmd_adapt)
    return parser


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (it may be replaced after setup)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def _progress_to_stdout() -> None:
    """Training progress is the command's output: INFO from the trainer goes to stdout."""
    train_logger = logging.getLogger("embeddinggemma.train")
    if train_logger.getEffectiveLevel() > logging.INFO:
        train_logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StdoutHandler) for h in train_logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        train_logger.addHandler(handler)
        train_logger.propagate = False


def _print_recipe(recipe) -> int:
    """`--print`: the resolved recipe as YAML (for `train` and `adapt`)."""
    import yaml

    from embeddinggemma.train.recipes import recipe_to_dict

    print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from embeddinggemma.train.recipes import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print:
        return _print_recipe(recipe)
    from embeddinggemma.train.trainer import train_recipe

    _progress_to_stdout()
    final = train_recipe(recipe)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank runs this; one line is the result
        print(f"trained {recipe.name}: {recipe.train.steps} steps -> {final}")
    return 0


def cmd_soup(args: argparse.Namespace) -> int:
    from embeddinggemma.train.soup import soup_checkpoints

    out = soup_checkpoints(args.checkpoints, args.output, weights=args.weights)
    print(f"souped {len(args.checkpoints)} checkpoints -> {out}")
    return 0


def cmd_student(args: argparse.Namespace) -> int:
    from embeddinggemma.train.student import make_student

    out, kept = make_student(args.checkpoint, args.output, args.layers)
    print(f"student with {len(kept)} layers (teacher layers {kept}) -> {out}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from embeddinggemma.train.ul2 import adapt_recipe, load_ul2_recipe

    recipe = load_ul2_recipe(args.recipe, args.overrides)
    if args.print:
        return _print_recipe(recipe)
    _progress_to_stdout()
    final = adapt_recipe(recipe)
    print(f"adapted {recipe.name}: {recipe.train.steps} steps -> {final}")
    return 0
