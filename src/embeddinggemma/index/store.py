"""The index file: one SQLite database holding files, chunks, their vectors, BM25 (FTS5) and derived codes.

Tables:

* ``meta``: what the index was built with (model, its fingerprint, dim, prompt version, chunking);
  a run with other settings is refused, never mixed in.
* ``files``: one row per indexed file with its content hash, so a second run re-embeds only changes.
* ``chunks`` + ``chunks_fts``: chunk text, title and line span; FTS5 (external content, kept in step
  by triggers) gives BM25 with Porter stemming.
* ``vectors``: each chunk's float32 embedding at the index dim: the exact search and the rescoring.
* ``derived``: structures rebuilt from ``vectors`` at the end of an indexing run (int8/binary codes,
  the HNSW graph), each stamped with the ``generation`` it was built from; a stale one is never used.

Every change to files, chunks and vectors happens in one transaction per batch of files, so an
interrupted run leaves the database as of its last commit, and the next run picks up from there.
The rollback journal (not WAL) keeps the index one file at rest.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "ChunkRow", "IndexStore", "NotAnIndexError", "fts_query"]

FORMAT = "embeddinggemma-index/1"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL, kind TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, chunks INTEGER NOT NULL, tokens INTEGER NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id), ordinal INTEGER NOT NULL,
    start_line INTEGER NOT NULL, end_line INTEGER NOT NULL, page INTEGER, title TEXT, text TEXT NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX chunks_by_file ON chunks(file_id);
CREATE TABLE vectors (id INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
CREATE TABLE derived (name TEXT PRIMARY KEY, generation INTEGER NOT NULL, info TEXT NOT NULL, data BLOB NOT NULL);
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    title, text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
END;
"""


class NotAnIndexError(ValueError):
    """The file exists but is not an index this version can read."""


@dataclass(frozen=True)
class ChunkRow:
    id: int
    path: str
    start_line: int
    end_line: int
    page: int | None
    title: str | None
    text: str


def fts_query(text: str) -> str | None:
    """A user's words as an FTS5 query: each word quoted (no FTS syntax is interpreted), any may match
    (BM25 ranks documents with more and rarer words higher). None when the text has no words."""
    words = re.findall(r"\w+", text)
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(w.lower() for w in words)) or None


class IndexStore:
    """An open index database. ``create=True`` makes a new one (the file must not exist yet)."""

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(
                f"no index at {self.path}; build it with `embeddinggemma index DIR --db {self.path}`"
            )
        # autocommit mode: transactions are explicit (see `transaction`)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:  # the first statement is where SQLite finds that a file is not a database
            self.conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise NotAnIndexError(f"{self.path} is not an embeddinggemma index ({exc})") from None
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if create:
            with self.transaction():
                for statement in _split_statements(_SCHEMA):
                    self.conn.execute(statement)
                self._set_meta({"format": FORMAT, "generation": 0})
        else:
            try:
                fmt = self.meta().get("format")
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                raise NotAnIndexError(f"{self.path} is not an embeddinggemma index ({exc})") from None
            if fmt != FORMAT:
                self.conn.close()
                raise NotAnIndexError(
                    f"{self.path} has index format {fmt!r}, this version reads {FORMAT!r}; rebuild it with "
                    f"`embeddinggemma index DIR --db {self.path} --rebuild`"
                )

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; any exception (Ctrl-C included) rolls everything back."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- meta --------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.conn.execute("SELECT key, value FROM meta")}

    def _set_meta(self, values: dict[str, Any]) -> None:
        self.conn.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def set_meta(self, values: dict[str, Any]) -> None:
        with self.transaction():
            self._set_meta(values)

    @property
    def generation(self) -> int:
        """Bumped by every change to the vectors: derived structures record the one they were built from."""
        return int(self.meta()["generation"])

    def _bump_generation(self) -> None:
        self.conn.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'")

    # -- files and chunks --------------------------------------------------------------------------

    def file_hashes(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT path, sha256 FROM files"))

    def _delete_file_rows(self, paths: Iterable[str]) -> int:
        count = 0
        for path in paths:
            row = self.conn.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
            if row is None:
                continue
            ids = [r[0] for r in self.conn.execute("SELECT id FROM chunks WHERE file_id = ?", row)]
            self.conn.executemany("DELETE FROM vectors WHERE id = ?", [(i,) for i in ids])
            self.conn.execute("DELETE FROM chunks WHERE file_id = ?", row)
            self.conn.execute("DELETE FROM files WHERE id = ?", row)
            count += 1
        return count

    def delete_files(self, paths: Sequence[str]) -> int:
        """Remove files and their chunks; returns how many were indexed."""
        if not paths:
            return 0
        with self.transaction():
            count = self._delete_file_rows(paths)
            self._bump_generation()
        return count

    def replace_files(self, batch: Sequence[tuple[Any, str, Sequence[Any], np.ndarray]]) -> None:
        """Write ``(SourceFile, sha256, chunks, embeddings)`` per file in one transaction, replacing
        whatever each path had."""
        with self.transaction():
            self._delete_file_rows(source.path for source, _, _, _ in batch)
            for source, digest, chunks, embeddings in batch:
                cursor = self.conn.execute(
                    "INSERT INTO files(path, sha256, kind, size, mtime_ns, chunks, tokens) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (source.path, digest, source.kind, source.size, source.mtime_ns, len(chunks),
                     sum(c.tokens for c in chunks)),
                )  # fmt: skip
                file_id = cursor.lastrowid
                vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
                for ordinal, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
                    chunk_id = self.conn.execute(
                        "INSERT INTO chunks(file_id, ordinal, start_line, end_line, page, title, text, tokens) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (file_id, ordinal, chunk.start_line, chunk.end_line, chunk.page, chunk.title, chunk.text,
                         chunk.tokens),
                    ).lastrowid  # fmt: skip
                    self.conn.execute("INSERT INTO vectors(id, embedding) VALUES (?, ?)", (chunk_id, vector.tobytes()))
            self._bump_generation()

    def counts(self) -> dict[str, int]:
        files, tokens = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM files").fetchone()
        (chunks,) = self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()
        return {"files": files, "chunks": chunks, "tokens": tokens}

    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        out: dict[int, ChunkRow] = {}
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            rows = self.conn.execute(
                "SELECT c.id, f.path, c.start_line, c.end_line, c.page, c.title, c.text FROM chunks c "
                f"JOIN files f ON f.id = c.file_id WHERE c.id IN ({','.join('?' * len(part))})",
                part,
            )
            out.update((row[0], ChunkRow(*row)) for row in rows)
        return out

    # -- vectors -----------------------------------------------------------------------------------

    def all_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Every chunk's vector: (ids (N,) int64, vectors (N, dim) float32), in id order."""
        (count,) = self.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()
        ids = np.empty(count, dtype=np.int64)
        matrix = np.empty((count, dim), dtype=np.float32)  # filled in place: no second copy of every vector
        rows = self.conn.execute("SELECT id, embedding FROM vectors ORDER BY id")
        for i, (chunk_id, blob) in enumerate(rows):
            ids[i] = chunk_id
            matrix[i] = np.frombuffer(blob, dtype=np.float32)
        return ids, matrix

    def vectors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """The float32 vectors of ``ids``, in that order (the rescoring step's reads)."""
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            query = f"SELECT id, embedding FROM vectors WHERE id IN ({','.join('?' * len(part))})"
            found.update(self.conn.execute(query, part))
        return np.frombuffer(b"".join(found[int(i)] for i in ids), dtype=np.float32).reshape(len(ids), dim)

    # -- BM25 --------------------------------------------------------------------------------------

    def bm25(self, query: str, limit: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score, higher is better) of the best ``limit`` chunks for the query's words."""
        match = fts_query(query)
        if match is None:
            return []
        rows = self.conn.execute(
            "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts) LIMIT ?",
            (match, limit),
        )
        return [(rowid, -score) for rowid, score in rows]  # FTS5's bm25() is lower-is-better

    # -- derived structures ------------------------------------------------------------------------

    def put_derived(self, name: str, generation: int, info: dict[str, Any], data: bytes) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO derived(name, generation, info, data) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                "SET generation = excluded.generation, info = excluded.info, data = excluded.data",
                (name, generation, json.dumps(info), data),
            )

    def get_derived(self, name: str) -> tuple[int, dict[str, Any], bytes] | None:
        row = self.conn.execute("SELECT generation, info, data FROM derived WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]), row[2])

    def drop_derived(self, name: str) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM derived WHERE name = ?", (name,))


def _split_statements(script: str) -> list[str]:
    """The schema's statements one by one (executescript would commit on its own)."""
    statements, buffer = [], []
    for line in script.strip().splitlines():
        buffer.append(line)
        joined = "\n".join(buffer).strip()
        if joined.endswith(";") and (not joined.startswith("CREATE TRIGGER") or joined.endswith("END;")):
            statements.append(joined)
            buffer = []
    return statements
