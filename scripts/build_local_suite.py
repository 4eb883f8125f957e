#!/usr/bin/env python
"""Build the local benchmark suite into OUTDIR (see embeddinggemma.corpus.local_suite).

    python scripts/build_local_suite.py data/local_suite

Needs Debian's apt (``apt-get update`` once) to download the pinned packages into
OUTDIR/_sources, and the Gemma tokenizer for token counts: by default it is found in the
Hugging Face cache (``google/embeddinggemma-300m``, offline); pass --tokenizer otherwise,
or --no-tokens to skip the counts. Re-running with an up-to-date OUTDIR only verifies it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from embeddinggemma.checkpoint import cached_file
from embeddinggemma.corpus.local_suite import SuiteConfig, build_local_suite

logger = logging.getLogger("build_local_suite")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path, help="where to write the suite (e.g. data/local_suite)")
    parser.add_argument("--tokenizer", type=Path, help="Gemma tokenizer.json for token counts")
    parser.add_argument("--no-tokens", action="store_true", help="skip token counting")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUTDIR is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    tokenizer = None
    if not args.no_tokens:
        tokenizer = args.tokenizer or cached_file("tokenizer.json")
        if tokenizer is None:
            parser.error("no tokenizer.json found in the Hugging Face cache; pass --tokenizer PATH or --no-tokens")
    manifest = build_local_suite(args.outdir, tokenizer_path=tokenizer, config=SuiteConfig(), force=args.force)
    summary = {
        name: {k: v for k, v in task.items() if k in ("kind", "queries", "documents", "pairs")}
        | {"tokens": task.get("tokens", {}).get("total_tokens")}
        for name, task in manifest["tasks"].items()
    }
    json.dump(
        {
            "tasks": summary,
            "token_totals": manifest["token_totals"],
            "build_seconds": manifest["build_seconds"],
        },
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
