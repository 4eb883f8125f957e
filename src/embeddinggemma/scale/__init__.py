"""Corpus-scale embedding on a Ray cluster (`pip install 'embeddinggemma[ray]'`).

- `embed_dataset(ds, ...)`: a Ray Data transform. `map_batches` runs a pool of actors, each holding one
  `Embedder` on its GPU (or CPU cores); the result is a lazy Dataset with the id column, one fixed-size
  list column per Matryoshka dim (float32, int8 or packed binary codes), the token count and an `error`
  column that says why a row was not embedded (null when it was).
- `embed_files(input, output, ...)` (the `embeddinggemma embed-dataset` command): Parquet or JSONL files
  in, Parquet out, resumable and exactly-once. The input is split into deterministic blocks (Parquet
  row groups, JSONL byte ranges); each block becomes one output file written atomically under a name
  fixed by the block, so a rerun after a crash skips the finished blocks. Bad rows go to a side file.

This is the top layer (beside the CLI and the server): library code never imports it. Its names load
on first use, and Ray only inside the functions that need it, so `embeddinggemma --help` (which
registers `embed-dataset`) works without the `ray` extra and its pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embeddinggemma.scale.job import JobSummary, embed_dataset, embed_files

__all__ = ["JobSummary", "embed_dataset", "embed_files"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from embeddinggemma.scale import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
