"""Corpus-scale embedding on a Ray cluster (`pip install 'embeddinggemma[ray]'`).

- `embed_dataset(ds, ...)`: a Ray Data transform. `map_batches` runs a pool of actors, each holding one
  `Embedder` on its GPU (or CPU cores); the result is a lazy Dataset with the id column, one fixed-size
  list column per Matryoshka dim (float32, int8 or packed binary codes), the token count and an `error`
  column that says why a row was not embedded (null when it was).
- `embed_files(input, output, ...)` (the `embeddinggemma embed-dataset` command): Parquet or JSONL files
  in, Parquet out, resumable and exactly-once. The input is split into deterministic blocks (Parquet
  row groups, JSONL byte ranges); each block becomes one output file written atomically under a name
  fixed by the block, so a rerun after a crash skips the finished blocks. Bad rows go to a side file.

This is the top layer (beside the CLI and the server): library code never imports it. Ray itself is
imported only inside the functions that need it, so `import embeddinggemma.scale` works without Ray.
"""

from __future__ import annotations

from embeddinggemma.scale.job import JobSummary, embed_dataset, embed_files

__all__ = ["JobSummary", "embed_dataset", "embed_files"]
