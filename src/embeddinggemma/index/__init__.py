"""Search your own files: index a folder into one SQLite file (BM25 + vectors) and query it.

from embeddinggemma.index import index_folder, Searcher
index_folder("docs/", "docs.db", embedder, model="google/embeddinggemma-300m")
Searcher("docs.db", embedder).search("how do I parse arguments?", k=5, mode="hybrid")

Its names load on first use: the command line registers `index` and `search` through
`embeddinggemma.index.cli`, which must import without the `index` extra (pathspec, markdown-it, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embeddinggemma.index.indexer import IndexOptions, IndexReport, index_folder
    from embeddinggemma.index.searcher import MODES, Searcher, SearchResult, reciprocal_rank_fusion
    from embeddinggemma.index.settings import IndexMismatchError

_HOMES = {
    "IndexOptions": "indexer",
    "IndexReport": "indexer",
    "index_folder": "indexer",
    "MODES": "searcher",
    "Searcher": "searcher",
    "SearchResult": "searcher",
    "reciprocal_rank_fusion": "searcher",
    "IndexMismatchError": "settings",
}
__all__ = [
    "MODES",
    "IndexMismatchError",
    "IndexOptions",
    "IndexReport",
    "SearchResult",
    "Searcher",
    "index_folder",
    "reciprocal_rank_fusion",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"embeddinggemma.index.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
