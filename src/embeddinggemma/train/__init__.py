"""Training: the recipe's losses (``losses``), and the data, trainer and souping built on them.

Kept import-free on purpose: ``import embeddinggemma.train.losses`` pulls in only what it needs.
"""
