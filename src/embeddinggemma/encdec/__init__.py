"""Encoder-decoder initialisation (paper section 2): the Gemma 3 decoder on our stack, the T5Gemma-style
encoder-decoder built from it, UL2 denoising batches, and EmbeddingGemma models initialised from them."""
