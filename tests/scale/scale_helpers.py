"""Corpora for the corpus-scale tests: texts in the tiny tokenizer's vocabulary, Parquet and JSONL files with bad rows.

A plain module (not a conftest), so tests import it by name.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Words of the tiny test tokenizer (tests/conftest.py), so texts tokenise to real ids, one per word.
_TEXT = (
    "the a red planet mars venus is known as which of and to in for on with search result query task code python "
    "function returns list string number file read write open close sort key value error line word first last big"
)
WORDS = _TEXT.split()
MAX_TOKENS = 24  # max_seq_length of the tests: a document text of more than ~16 words is over-long


def make_texts(n: int, seed: int = 0, longest: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(n)]


def corpus_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows with ids, texts and titles; every 17th text is empty or null, every 23rd title is null."""
    texts = make_texts(n, seed)
    titles = make_texts(n, seed + 1, longest=3)
    rows = []
    for i in range(n):
        text: str | None = texts[i]
        if i % 17 == 5:
            text = "   " if i % 2 else None
        rows.append({"id": 1000 + i, "text": text, "title": None if i % 23 == 7 else titles[i]})
    return rows


def write_parquet_files(directory: Path, rows: list[dict], files: int, row_group_size: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    per_file = -(-len(rows) // files)
    paths = []
    for k in range(files):
        chunk = rows[k * per_file : (k + 1) * per_file]
        table = pa.Table.from_pylist(
            chunk, schema=pa.schema([("id", pa.int64()), ("text", pa.string()), ("title", pa.string())])
        )
        path = directory / f"shard-{k:02d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path
