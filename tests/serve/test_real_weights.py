"""The released checkpoint behind the server, through the official `openai` client: the default query prompt,
titles for documents, Matryoshka `dimensions`, base64; equal to offline `Embedder` output."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.real_weights

QUERIES = ["Which planet is known as the Red Planet?", "how do I parse command line arguments?"]
DOCUMENTS = ["Mars, known for its reddish appearance, is often called the Red Planet.", "Venus is Earth's twin."]


def test_openai_client_against_the_real_model(real_embedder, live_server):
    openai = pytest.importorskip("openai")
    with live_server(real_embedder, model_name="google/embeddinggemma-300m") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        model = "google/embeddinggemma-300m"
        queries = client.embeddings.create(model=model, input=QUERIES)  # base64 on the wire
        np.testing.assert_allclose([d.embedding for d in queries.data], real_embedder.encode_query(QUERIES), atol=1e-5)
        documents = client.embeddings.create(
            model=model, input=DOCUMENTS, dimensions=256, encoding_format="float", extra_body={"titles": ["Mars", None]}
        )
        expected = real_embedder.encode_document(DOCUMENTS, titles=["Mars", None], dim=256)
        np.testing.assert_allclose([d.embedding for d in documents.data], expected, atol=1e-5)
        scores = (
            np.array([d.embedding for d in queries.data])[:, :256] @ np.array([d.embedding for d in documents.data]).T
        )
        assert scores[0].argmax() == 0  # the Red Planet query finds Mars
