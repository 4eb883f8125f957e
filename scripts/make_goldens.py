"""Produce the real-checkpoint goldens with the reference stack (sentence-transformers on transformers).

    HF_HUB_OFFLINE=1 python scripts/make_goldens.py tests/goldens/embeddinggemma-300m.json

The texts are stored beside the embeddings, so the test does not depend on where they came from: short
queries, documents with and without titles, a long passage (> 600 tokens, so the +-256 sliding band
matters), several languages and scripts, and code. Embeddings are fp32, encoded one text at a time on
CPU, stored as base64 little-endian float32.
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import torch

MODEL = "google/embeddinggemma-300m"

QUERIES = [
    "Which planet is known as the Red Planet?",
    "how do I parse command line arguments?",
    "python sort list of dicts by key",
    "Wie hoch ist der Eiffelturm?",
    "¿Cuál es la capital de Australia?",
    "東京の人口はどれくらいですか",
    "что такое машинное обучение",
    "x",
]
DOCUMENTS = [
    ("Mars", "Mars, known for its reddish appearance, is often referred to as the Red Planet."),
    (None, "Venus is often called Earth's twin because of its similar size and proximity."),
    ("argparse", "The argparse module makes it easy to write user-friendly command-line interfaces."),
    (None, "Der Eiffelturm ist ein 330 Meter hoher Eisenfachwerkturm in Paris."),
    ("Canberra", "Canberra es la capital de Australia, situada en el Territorio de la Capital Australiana."),
    (None, "東京都の人口は約1400万人で、日本で最も人口の多い都道府県です。"),
    (None, "La photosynthèse convertit l'énergie lumineuse en énergie chimique chez les plantes."),
    (None, "def sort_by_key(rows, key):\n    return sorted(rows, key=lambda row: row[key])\n"),
    (
        "Rust",
        'fn main() {\n    let v: Vec<i32> = (1..=10).filter(|x| x % 2 == 0).collect();\n    println!("{:?}", v);\n}',
    ),
    (None, ""),
]
CARD_QUERY = "Which planet is known as the Red Planet?"
CARD_DOCUMENTS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]


def long_passage(tokenizer, min_tokens: int = 900) -> str:
    """Real English prose over `min_tokens` tokens: this interpreter's argparse and textwrap documentation."""
    import argparse as argparse_module
    import textwrap

    parts = [argparse_module.__doc__ or ""]
    for obj in (argparse_module.ArgumentParser, textwrap.TextWrapper, textwrap):
        parts.append(obj.__doc__ or "")
    text = "\n\n".join(p.strip() for p in parts if p.strip())
    if len(tokenizer(text)["input_ids"]) < min_tokens:
        raise SystemExit("the chosen documentation is too short for a long-passage golden")
    return text


def pack(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(MODEL, device="cpu")
    model.to(torch.float32)
    tokenizer = model.tokenizer
    document = model.prompts["document"]
    records = []
    long_text = long_passage(tokenizer)
    for text in [*QUERIES, long_text]:
        records.append({"kind": "query", "task": "query", "text": text, "prompt": model.prompts["query"]})
    for title, text in DOCUMENTS:
        prompt = f"title: {title} | text: " if title else document
        records.append({"kind": "document", "title": title, "text": text, "prompt": prompt})
    records.append({"kind": "document", "title": None, "text": long_text, "prompt": document})
    for text in QUERIES[:3]:
        records.append({"kind": "query", "task": "STS", "text": text, "prompt": model.prompts["STS"]})

    for record in records:
        embedding = model.encode(record["text"], prompt=record["prompt"], convert_to_numpy=True)
        record["tokens"] = len(tokenizer(record["prompt"] + record["text"])["input_ids"])
        record["embedding"] = pack(embedding)
    card_scores = model.similarity(model.encode_query(CARD_QUERY), model.encode_document(CARD_DOCUMENTS))
    versions = {name: importlib.metadata.version(name) for name in ("sentence-transformers", "transformers", "torch")}
    out = {
        "model": MODEL,
        "produced_by": "scripts/make_goldens.py",
        "versions": versions | {"python": sys.version.split()[0]},
        "dtype": "float32",
        "card": {"query": CARD_QUERY, "documents": CARD_DOCUMENTS, "scores": card_scores[0].tolist()},
        "records": records,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} goldens to {args.output}; longest {max(r['tokens'] for r in records)} tokens")


if __name__ == "__main__":
    main()
