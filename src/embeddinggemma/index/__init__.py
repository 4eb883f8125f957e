"""Search your own files: index a folder into one SQLite file (BM25 + vectors) and query it.

from embeddinggemma.index import index_folder, Searcher
index_folder("docs/", "docs.db", embedder, model="google/embeddinggemma-300m")
Searcher("docs.db", embedder).search("how do I parse arguments?", k=5, mode="hybrid")
"""

from __future__ import annotations

from embeddinggemma.index.indexer import IndexOptions, IndexReport, index_folder
from embeddinggemma.index.searcher import MODES, Searcher, SearchResult, reciprocal_rank_fusion
from embeddinggemma.index.settings import IndexMismatchError

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
