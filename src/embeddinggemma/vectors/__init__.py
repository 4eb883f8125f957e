"""What a vector store does with embeddings once they exist: exact search and compressed codes.

* ``exact``: batched brute-force top-k (cosine or dot) with a deterministic tie rule; memory does not
  grow with the corpus.
* ``codes``: int8 (calibrated per-dimension ranges) and binary (sign bits, Hamming) embedding codes,
  and the float vectors whose dot products score them.

Both take numpy arrays or torch tensors and know nothing of the model: the evaluation, hard-negative
mining and any index built on top use them. Kept import-free, so ``embeddinggemma.vectors.codes``
needs only numpy.
"""
