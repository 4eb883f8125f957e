"""Streaming, resumable sampling of single-dataset batches from a mixture (paper section 2).

The paper draws every batch from ONE dataset, the dataset chosen by the mixture's sampling rates
(a grid-searched seed mixture plus Dirichlet samples, refined by Bayesian optimisation, then souped).
:class:`MixtureLoader` does that, deterministically from a seed, and can be checkpointed: its
``state_dict()`` holds every stream's position, its shuffle buffer (as byte offsets, not texts) and
every RNG state, so a resumed run yields exactly the batches an uninterrupted run would have.

Each dataset is read by an :class:`ExampleStream`, which never loads the file: per epoch it visits
fixed byte blocks of the JSONL file in a seeded random order (a line belongs to the block holding its
first byte) and passes the lines through a bounded shuffle buffer. A file no larger than the buffer
is therefore fully shuffled each epoch; a larger one is shuffled at block granularity plus the
buffer. Each example is seen exactly once per epoch (the buffer is drained at the epoch's end).

The loader is rank-agnostic: every DDP rank builds the same loader and slices the global batch
(``TrainingBatch.slice``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from embeddinggemma.train.data import (
    DataFormatError,
    DatasetSpec,
    TrainingBatch,
    TrainingExample,
    collate,
    decode_line,
    load_dataset,
    prompt_example,
)

if TYPE_CHECKING:
    from embeddinggemma.train.teacher import TeacherCache

logger = logging.getLogger(__name__)

__all__ = ["ExampleStream", "MixtureEntry", "MixtureLoader", "MixtureSpec", "load_mixture"]

STATE_VERSION = 1


def derive_seed(seed: int, *parts: str | int) -> int:
    """A 63-bit seed from a base seed and labels, so each dataset's stream is independent of the others
    (adding a dataset to a mixture does not reshuffle the rest)."""
    payload = "\x1f".join(str(p) for p in (seed, *parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little") >> 1


# -------------------------------------------------------------------------------------------- stream


class ExampleStream:
    """Endless, epoch-by-epoch shuffled examples of one dataset, with O(buffer_size) memory.

    Args:
        spec: the dataset.
        seed: base seed (combined with the dataset name).
        buffer_size: examples held in the shuffle buffer (the only examples in memory).
        block_bytes: size of the byte blocks whose order is shuffled each epoch.
    """

    def __init__(self, spec: DatasetSpec, *, seed: int, buffer_size: int = 8192, block_bytes: int = 1 << 20) -> None:
        if buffer_size < 1 or block_bytes < 1:
            raise ValueError(f"buffer_size and block_bytes must be >= 1, got {buffer_size}, {block_bytes}")
        if spec.num_examples == 0:
            raise ValueError(f"dataset {spec.name!r} ({spec.path}) has no examples")
        self.spec = spec
        self.buffer_size = buffer_size
        self.block_bytes = block_bytes
        self.file_size = spec.path.stat().st_size
        self.num_blocks = max(1, math.ceil(self.file_size / block_bytes))
        self._seed = derive_seed(seed, "stream", spec.name)
        # Buffer draws and negative sampling: Python's Mersenne Twister (a draw costs ~0.3 us, numpy's
        # Generator.integers ~10 us per scalar), state saved with the stream.
        self.rng = random.Random(self._seed)
        self.epoch = 0
        self._order = self._block_order(0)
        self._block_pos = 0
        self._offset: int | None = None  # next byte to read in the current block (None: block not entered)
        self._buffer: list[tuple[int, TrainingExample]] = []
        self._seen = 0  # examples drawn in this epoch
        self._filled = False  # whether this epoch's buffer was filled
        self._fh: BinaryIO | None = None
        self._fh_pos = -1  # where the file handle is, to skip needless seeks

    # -- reading ---------------------------------------------------------------------------------

    def _file(self) -> BinaryIO:
        if self._fh is None:
            self._fh = self.spec.path.open("rb")
            self._fh_pos = 0
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._fh_pos = -1

    def _block_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._seed, 2, epoch]).permutation(self.num_blocks)

    def _line_number(self, offset: int) -> int:
        """1-based line number of the line starting at ``offset`` (only computed for error messages)."""
        fh = self._file()
        fh.seek(0)
        self._fh_pos = -1
        count, done = 1, 0
        while done < offset:
            chunk = fh.read(min(1 << 20, offset - done))
            count += chunk.count(b"\n")
            done += len(chunk)
        return count

    def _read_at(self, offset: int) -> tuple[bytes, int]:
        fh = self._file()
        if offset != self._fh_pos:
            fh.seek(offset)
        line = fh.readline()
        self._fh_pos = offset + len(line)
        return line, self._fh_pos

    def _decode(self, line: bytes, offset: int) -> TrainingExample | None:
        try:
            return decode_line(line, f"{self.spec.path}:?")
        except DataFormatError as exc:
            where = f"{self.spec.path}:{self._line_number(offset)}"
            raise DataFormatError(str(exc).replace(f"{self.spec.path}:?", where, 1)) from None

    def _block_start(self, block: int) -> int:
        start = block * self.block_bytes
        if start == 0:
            return 0
        _, after = self._read_at(start - 1)  # the first line starting at or after `start`
        return after

    def _next_line(self) -> tuple[int, TrainingExample] | None:
        """The next example of this epoch in block order, or None when every block is read."""
        while self._block_pos < self.num_blocks:
            block = int(self._order[self._block_pos])
            if self._offset is None:
                self._offset = self._block_start(block)
            end = min((block + 1) * self.block_bytes, self.file_size)
            if self._offset >= end:
                self._block_pos += 1
                self._offset = None
                continue
            start = self._offset
            line, self._offset = self._read_at(start)
            example = self._decode(line, start)
            if example is not None:
                return start, example
        return None

    # -- drawing ---------------------------------------------------------------------------------

    def _fill(self) -> None:
        while len(self._buffer) < self.buffer_size:
            item = self._next_line()
            if item is None:
                break
            self._buffer.append(item)
        self._filled = True

    def _next_epoch(self) -> None:
        if self._seen != self.spec.num_examples:
            raise DataFormatError(
                f"{self.spec.path}: an epoch yielded {self._seen} examples but dataset.json says "
                f"{self.spec.num_examples}; the file changed after its descriptor was written: rewrite it with "
                "write_dataset or fix num_examples"
            )
        self.epoch += 1
        self._order = self._block_order(self.epoch)
        self._block_pos, self._offset, self._seen, self._filled = 0, None, 0, False

    def take(self, n: int) -> list[TrainingExample]:
        """Up to ``n`` examples of the current epoch; fewer only when the epoch ends (the next call then
        starts the next epoch)."""
        out: list[TrainingExample] = []
        while len(out) < n:
            if not self._filled:
                self._fill()
            if not self._buffer:
                self._next_epoch()
                if out:
                    break
                continue
            j = self.rng.randrange(len(self._buffer))
            out.append(self._buffer[j][1])
            self._seen += 1
            item = self._next_line()
            if item is not None:
                self._buffer[j] = item
            else:
                self._buffer[j] = self._buffer[-1]
                self._buffer.pop()
        if self._filled and not self._buffer:
            self._next_epoch()  # the epoch ended exactly here: start the next one cleanly
        return out

    @property
    def buffered(self) -> int:
        """Examples currently held in memory."""
        return len(self._buffer)

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Positions, buffer (byte offsets) and RNG state: small, JSON- and torch.save-able."""
        version, internal, gauss = self.rng.getstate()
        return {
            "epoch": self.epoch,
            "block_pos": self._block_pos,
            "offset": self._offset,
            "seen": self._seen,
            "filled": self._filled,
            "buffer": [offset for offset, _ in self._buffer],
            "rng": [version, list(internal), gauss],
            "file_size": self.file_size,
            "num_examples": self.spec.num_examples,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["file_size"] != self.file_size or state["num_examples"] != self.spec.num_examples:
            raise ValueError(
                f"dataset {self.spec.name!r}: the checkpoint was taken on a file of {state['file_size']} bytes / "
                f"{state['num_examples']} examples, {self.spec.path} now has {self.file_size} / "
                f"{self.spec.num_examples}; resume with the same data or start a new run"
            )
        self.epoch = int(state["epoch"])
        self._order = self._block_order(self.epoch)
        self._block_pos = int(state["block_pos"])
        self._offset = None if state["offset"] is None else int(state["offset"])
        self._seen = int(state["seen"])
        self._filled = bool(state["filled"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self._buffer = []
        for offset in state["buffer"]:
            line, _ = self._read_at(int(offset))
            example = self._decode(line, int(offset))
            if example is None:
                raise ValueError(
                    f"{self.spec.path}: no example at byte {offset}; the file changed since the checkpoint"
                )
            self._buffer.append((int(offset), example))


# ------------------------------------------------------------------------------------------- mixture


@dataclass(frozen=True)
class MixtureEntry:
    """One dataset of a mixture and its (unnormalised) sampling rate."""

    dataset: Path
    rate: float


@dataclass(frozen=True)
class MixtureSpec:
    """Datasets and sampling rates; the recipe YAML embeds it as a list of ``{dataset, rate}``."""

    entries: tuple[MixtureEntry, ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("a mixture needs at least one dataset")
        _check_rates([e.rate for e in self.entries])

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Sequence[Any], base_dir: str | Path | None = None) -> MixtureSpec:
        """Accept ``[{dataset: PATH, rate: R}, ...]`` or ``{"mixture"|"datasets": [...]}``; relative dataset
        paths are resolved against ``base_dir`` (the YAML file's directory when loaded from a file)."""
        if isinstance(config, Mapping):
            keys = [k for k in ("mixture", "datasets") if k in config]
            if len(keys) != 1:
                raise ValueError(
                    f"a mixture mapping needs exactly one of 'mixture' or 'datasets', got {sorted(config)}"
                )
            config = config[keys[0]]
        if isinstance(config, str | bytes) or not isinstance(config, Sequence):
            raise ValueError(f"a mixture is a list of {{dataset, rate}} entries, got {type(config).__name__}")
        entries = []
        for i, item in enumerate(config):
            if not isinstance(item, Mapping) or set(item) != {"dataset", "rate"}:
                raise ValueError(f"mixture entry {i} must have exactly the keys 'dataset' and 'rate', got {item!r}")
            rate = item["rate"]
            if isinstance(rate, bool) or not isinstance(rate, int | float):
                raise ValueError(f"mixture entry {i}: rate must be a number, got {rate!r}")
            path = Path(item["dataset"])
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            entries.append(MixtureEntry(path, float(rate)))
        return cls(tuple(entries))

    def datasets(self) -> list[DatasetSpec]:
        return [load_dataset(e.dataset) for e in self.entries]

    @property
    def rates(self) -> list[float]:
        return [e.rate for e in self.entries]


def load_mixture(
    source: str | Path | Mapping[str, Any] | Sequence[Any], base_dir: str | Path | None = None
) -> MixtureSpec:
    """A mixture from a YAML/JSON file path or an already-parsed config (a recipe's ``mixture:`` entry)."""
    if isinstance(source, str | Path):
        path = Path(source)
        text = path.read_text(encoding="utf-8")
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - PyYAML is part of the [train] extra
            raise ImportError("reading a mixture file needs PyYAML: pip install 'embeddinggemma[train]'") from exc
        return MixtureSpec.from_config(yaml.safe_load(text), base_dir=base_dir or path.parent)
    return MixtureSpec.from_config(source, base_dir=base_dir)


def _check_rates(rates: Sequence[float]) -> np.ndarray:
    r = np.asarray(rates, dtype=np.float64)
    if r.ndim != 1 or not np.all(np.isfinite(r)) or np.any(r < 0) or r.sum() <= 0:
        raise ValueError(f"sampling rates must be finite, >= 0 and not all 0, got {list(rates)}")
    return r / r.sum()


class MixtureLoader:
    """Endless single-dataset global batches from a mixture (paper section 2), deterministic and resumable.

    Args:
        datasets: dataset descriptors (or directories / ``dataset.json`` paths); names must be unique.
        rates: sampling rate per dataset (normalised here), a sequence or a name -> rate mapping.
        batch_size: rows per global batch.
        seed: determines everything: dataset choice, shuffles, hard-negative sampling.
        num_hard_negatives: H, hard negatives per row; rows with more stored negatives get H drawn at
            random each time they are seen (fewer: padded and masked). 0 = in-batch negatives only.
        teacher: a :class:`~embeddinggemma.train.teacher.TeacherCache` for every dataset, or a mapping
            dataset name -> cache (datasets not in the mapping get ``teacher=None``).
        drop_last: a batch never mixes two epochs; with True the last < batch_size examples of an epoch
            are skipped (every batch is full: what DDP slicing needs), with False they form a short batch.
        max_batches: stop after this many batches in total (counting batches before a resume); None = endless.
        buffer_size, block_bytes: streaming shuffle parameters, see :class:`ExampleStream`.
        verify_teacher: check once, up front, that the teacher cache holds every text of every dataset
            (a full pass over the data; turn off for huge datasets).
    """

    def __init__(
        self,
        datasets: Sequence[DatasetSpec | str | Path],
        rates: Sequence[float] | Mapping[str, float],
        batch_size: int,
        *,
        seed: int,
        num_hard_negatives: int,
        teacher: TeacherCache | Mapping[str, TeacherCache] | None = None,
        drop_last: bool = True,
        max_batches: int | None = None,
        buffer_size: int = 8192,
        block_bytes: int = 1 << 20,
        verify_teacher: bool = True,
    ) -> None:
        specs = [d if isinstance(d, DatasetSpec) else load_dataset(d) for d in datasets]
        names = [s.name for s in specs]
        if not specs or len(set(names)) != len(names):
            raise ValueError(f"need at least one dataset and unique dataset names, got {names}")
        if isinstance(rates, Mapping):
            if set(rates) != set(names):
                raise ValueError(f"rates are given for {sorted(rates)} but the datasets are {sorted(names)}")
            rates = [rates[n] for n in names]
        if len(rates) != len(specs):
            raise ValueError(f"got {len(rates)} rates for {len(specs)} datasets")
        self.probs = _check_rates(rates)
        if batch_size < 1 or num_hard_negatives < 0:
            raise ValueError(
                f"batch_size must be >= 1 and num_hard_negatives >= 0, got {batch_size}, {num_hard_negatives}"
            )
        if drop_last:
            small = [
                f"{s.name} ({s.num_examples})"
                for s, p in zip(specs, self.probs, strict=True)
                if p > 0 and s.num_examples < batch_size
            ]
            if small:
                raise ValueError(
                    f"datasets {small} have fewer examples than batch_size={batch_size}, so drop_last=True could "
                    "never form a batch from them; lower the batch size, drop them, or pass drop_last=False"
                )
        self.specs = specs
        self.rates = [float(r) for r in rates]
        self.batch_size = batch_size
        self.seed = seed
        self.num_hard_negatives = num_hard_negatives
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.streams = [ExampleStream(s, seed=seed, buffer_size=buffer_size, block_bytes=block_bytes) for s in specs]
        self._choice_rng = np.random.default_rng([derive_seed(seed, "mixture"), 0])
        self.batches = 0
        self._teachers: list[TeacherCache | None] = [
            (teacher.get(s.name) if isinstance(teacher, Mapping) else teacher) for s in specs
        ]
        if verify_teacher:
            for spec, cache in zip(specs, self._teachers, strict=True):
                if cache is not None:
                    cache.check_dataset(spec)

    @classmethod
    def from_mixture(
        cls, mixture: MixtureSpec | Mapping[str, Any] | Sequence[Any] | str | Path, batch_size: int, **kwargs: Any
    ) -> MixtureLoader:
        spec = mixture if isinstance(mixture, MixtureSpec) else load_mixture(mixture)
        return cls(spec.datasets(), spec.rates, batch_size, **kwargs)

    def __iter__(self) -> Iterator[TrainingBatch]:
        return self

    def __next__(self) -> TrainingBatch:
        if self.max_batches is not None and self.batches >= self.max_batches:
            raise StopIteration
        k = int(self._choice_rng.choice(len(self.streams), p=self.probs))
        batch = self._batch(k)
        self.batches += 1
        return batch

    def _batch(self, k: int) -> TrainingBatch:
        stream, spec = self.streams[k], self.specs[k]
        examples = stream.take(self.batch_size)
        if len(examples) < self.batch_size and self.drop_last:
            examples = stream.take(self.batch_size)  # the epoch's tail was dropped; a fresh epoch is full
        h = self.num_hard_negatives
        rows = []
        for ex in examples:
            if len(ex.negatives) > h:
                keep = sorted(stream.rng.sample(range(len(ex.negatives)), h))
                titles = ex.negative_titles
                ex = TrainingExample(
                    ex.query,
                    ex.positive,
                    tuple(ex.negatives[i] for i in keep),
                    ex.title,
                    None if titles is None else tuple(titles[i] for i in keep),
                )
            rows.append(prompt_example(ex, spec.task, symmetric=spec.symmetric))
        batch = collate(rows, dataset=spec.name, task=spec.task, num_hard_negatives=h)
        cache = self._teachers[k]
        if cache is not None:
            batch.teacher = cache.batch_embeddings(batch)
        return batch

    # -- checkpointing ---------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            "datasets": [[s.name, s.num_examples] for s in self.specs],
            "rates": self.rates,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "num_hard_negatives": self.num_hard_negatives,
            "drop_last": self.drop_last,
            "buffer_size": self.streams[0].buffer_size,
            "block_bytes": self.streams[0].block_bytes,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here (plus the configuration, to refuse a mismatch)."""
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "batches": self.batches,
            "choice_rng": self._choice_rng.bit_generator.state,
            "streams": {s.spec.name: s.state_dict() for s in self.streams},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        config = self._config()
        saved = {k: (list(map(list, v)) if k == "datasets" else v) for k, v in state["config"].items()}
        diff = sorted(k for k in config if saved.get(k) != config[k])
        if diff:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {config[k]!r}" for k in diff)
            raise ValueError(f"cannot resume exactly: the loader differs from the checkpoint's ({details})")
        self.batches = int(state["batches"])
        self._choice_rng.bit_generator.state = state["choice_rng"]
        for stream in self.streams:
            stream.load_state_dict(state["streams"][stream.spec.name])

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
