"""Model souping: a (weighted) parameter average of fine-tuned checkpoints.

EmbeddingGemma's final model is the uniform average of models fine-tuned on different data mixtures
(paper section 2, "model souping", after Wortsman et al. 2022): it beat the best single mixture (61.2 vs
60.4 on MTEB Multilingual, docs section 5). Averaging only makes sense between fine-tunes of ONE
pre-trained model, so every checkpoint must agree on the configuration, the module layout, the tensor
names, shapes and dtypes, the tokenizer and the prompts; any difference is refused with an error that
names it, because an average of mismatched weights loads fine and embeds garbage.

Every ``*.safetensors`` file of the sentence-transformers layout is averaged (the encoder and each Dense
module), tensor by tensor in float64, so memory stays at one tensor per checkpoint and souping N copies
of one checkpoint reproduces it bit for bit. The other files (configs, tokenizer) are copied from the
first checkpoint and ``soup.json`` records the ingredients and weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from embeddinggemma.checkpoint import TOKENIZER_FILES, read_checkpoint_info, resolve_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["SoupError", "check_compatible", "soup_checkpoints"]


class SoupError(ValueError):
    """Checkpoints that cannot be averaged; the message names the first difference."""


def _weight_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.safetensors"))


def _tensor_specs(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(str(path), framework="pt") as handle:
        specs = {}
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensor_slice = handle.get_slice(name)
            specs[name] = (tuple(tensor_slice.get_shape()), str(tensor_slice.get_dtype()))
    return specs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config_differences(a: object, b: object, prefix: str = "") -> list[str]:
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        out = []
        for f in dataclasses.fields(a):
            out += _config_differences(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} vs {b!r}"]


def check_compatible(roots: Sequence[Path]) -> None:
    """Raise ``SoupError`` naming the first difference between ``roots[0]`` and any other checkpoint."""
    first = roots[0]
    info0, modules0 = read_checkpoint_info(first)
    files0 = _weight_files(first)
    specs0 = {f: _tensor_specs(first / f) for f in files0}
    tokenizer0 = {n: _digest(first / n) for n in TOKENIZER_FILES if (first / n).exists()}
    for root in roots[1:]:
        where = f"{first} vs {root}"
        info, modules = read_checkpoint_info(root)
        diffs = _config_differences(info.config, info0.config)
        if diffs:
            raise SoupError(f"different model configs ({where}): {'; '.join(diffs[:4])}")
        if [(m["kind"], m.get("path")) for m in modules] != [(m["kind"], m.get("path")) for m in modules0]:
            raise SoupError(f"different module layouts in modules.json ({where})")
        if info.prompts != info0.prompts:
            changed = sorted(
                k for k in set(info.prompts) | set(info0.prompts) if info.prompts.get(k) != info0.prompts.get(k)
            )
            raise SoupError(f"different prompts ({where}): {changed}; soup models trained with the same prompts")
        tokenizer = {n: _digest(root / n) for n in TOKENIZER_FILES if (root / n).exists()}
        if tokenizer != tokenizer0:
            changed = sorted(n for n in set(tokenizer) | set(tokenizer0) if tokenizer.get(n) != tokenizer0.get(n))
            raise SoupError(f"different tokenizers ({where}): {', '.join(changed)} differ")
        files = _weight_files(root)
        if files != files0:
            raise SoupError(f"different weight files ({where}): {sorted(set(files) ^ set(files0))}")
        for f in files0:
            specs = _tensor_specs(root / f)
            missing, extra = sorted(set(specs0[f]) - set(specs)), sorted(set(specs) - set(specs0[f]))
            if missing or extra:
                raise SoupError(f"different tensor names in {f} ({where}): only in the first {missing[:4]}, "
                                f"only in the other {extra[:4]}")  # fmt: skip
            for name, (shape, dtype) in specs0[f].items():
                if specs[name] != (shape, dtype):
                    raise SoupError(
                        f"{f}: tensor {name} is {shape} {dtype} in {first} but {specs[name][0]} "
                        f"{specs[name][1]} in {root}"
                    )


def _normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise SoupError(f"got {len(weights)} weights for {n} checkpoints; pass one weight per checkpoint")
    bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
    if bad:
        raise SoupError(f"soup weights must be positive and finite, got {bad}; drop a checkpoint instead of weight 0")
    total = math.fsum(weights)
    return [w / total for w in weights]


def soup_checkpoints(
    checkpoints: Sequence[str | Path], out: str | Path, *, weights: Sequence[float] | None = None
) -> Path:
    """Average ``checkpoints`` (hub ids or directories) into a new checkpoint at ``out``.

    Args:
        checkpoints: two or more compatible checkpoints (one is allowed: it is copied).
        out: a new or empty directory, not one of the inputs.
        weights: positive numbers, normalised to sum to 1; default uniform (the paper's soup).

    Returns:
        ``out``, loadable by ``load_checkpoint`` and by ``SentenceTransformer``.
    """
    if not checkpoints:
        raise SoupError("no checkpoints to soup; pass at least one")
    roots = [resolve_checkpoint(c) for c in checkpoints]
    norm = _normalised_weights(weights, len(roots))
    out = Path(out)
    if any(out.resolve() == r.resolve() for r in roots):
        raise SoupError(f"output {out} is one of the inputs; write the soup to a new directory")
    if out.exists() and any(out.iterdir()):
        raise SoupError(f"output {out} exists and is not empty; choose a new directory")
    check_compatible(roots)

    shutil.copytree(roots[0], out, ignore=shutil.ignore_patterns("*.safetensors", "soup.json"), dirs_exist_ok=True)
    for rel in _weight_files(roots[0]):
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(safe_open(str(r / rel), framework="pt")) for r in roots]
            metadata = handles[0].metadata()
            averaged = {}
            for name in handles[0].keys():  # noqa: SIM118
                tensors = [h.get_tensor(name) for h in handles]
                if not tensors[0].is_floating_point():
                    if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
                        raise SoupError(f"{rel}: integer tensor {name} differs between checkpoints; cannot average")
                    averaged[name] = tensors[0]
                    continue
                # Start from the first term (not zeros) so that even the sign of -0.0 survives a no-op soup.
                acc = tensors[0].to(torch.float64) * norm[0]
                for w, t in zip(norm[1:], tensors[1:], strict=True):
                    acc.add_(t.to(torch.float64), alpha=w)
                averaged[name] = acc.to(tensors[0].dtype)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(averaged, str(out / rel), metadata=metadata)
    record = {"ingredients": [str(c) for c in checkpoints], "weights": norm}
    (out / "soup.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("souped %d checkpoints into %s (weights %s)", len(roots), out, [round(w, 4) for w in norm])
    return out
