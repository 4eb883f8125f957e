"""Task prompts (doc section 4): plain text prepended to the input, each with a trailing space.

The checkpoint's `config_sentence_transformers.json` carries sentence-transformers' prompt table
(names such as "query", "document", "STS", "Retrieval-query"). We accept those names verbatim and add
short lowercase task names, including the ones the model card gives but the file lacks (question
answering, fact checking, code retrieval).
"""

from __future__ import annotations

from collections.abc import Mapping

QUERY_PROMPT = "task: search result | query: "
DOCUMENT_PROMPT = "title: none | text: "
DOCUMENT_WITH_TITLE = "title: {title} | text: "

# Lowercase task names -> prompt. "document" is the side that gets titles (see `document_prompt`).
TASK_PROMPTS: dict[str, str] = {
    "query": QUERY_PROMPT,
    "retrieval": QUERY_PROMPT,
    "reranking": QUERY_PROMPT,
    "bitext": QUERY_PROMPT,
    "document": DOCUMENT_PROMPT,
    "sts": "task: sentence similarity | query: ",
    "sentence_similarity": "task: sentence similarity | query: ",
    "pair_classification": "task: sentence similarity | query: ",
    "classification": "task: classification | query: ",
    "clustering": "task: clustering | query: ",
    "code_retrieval": "task: code retrieval | query: ",
    "summarization": "task: summarization | query: ",
    "question_answering": "task: question answering | query: ",
    "fact_checking": "task: fact checking | query: ",
}


def document_prompt(title: str | None) -> str:
    """The document prompt: `title: {title} | text: ` when a title exists (better), else `title: none`."""
    if title is None or not title.strip():
        return DOCUMENT_PROMPT
    return DOCUMENT_WITH_TITLE.format(title=title.strip())


class UnknownTaskError(KeyError, ValueError):
    """A task name that is in no prompt table. A KeyError for Mapping semantics, a ValueError for callers."""

    def __str__(self) -> str:
        return str(self.args[0])


class PromptTable(Mapping[str, str]):
    """Task name -> prompt: our lowercase names plus the checkpoint's own names (which win on clash)."""

    def __init__(self, checkpoint_prompts: Mapping[str, str] | None = None) -> None:
        self._prompts = dict(TASK_PROMPTS)
        self._checkpoint = dict(checkpoint_prompts or {})
        self._prompts.update(self._checkpoint)

    def __getitem__(self, task: str) -> str:
        try:
            return self._prompts[task]
        except KeyError:
            lowered = task.lower().replace("-", "_").replace(" ", "_") if isinstance(task, str) else task
            if lowered in self._prompts:
                return self._prompts[lowered]
            raise UnknownTaskError(
                f"unknown task {task!r}; choose one of {sorted(self._prompts)} or pass prompt='...' directly"
            ) from None

    def __iter__(self):
        return iter(self._prompts)

    def __len__(self) -> int:
        return len(self._prompts)

    @property
    def checkpoint_prompts(self) -> dict[str, str]:
        """The table as it should be written back to config_sentence_transformers.json."""
        return dict(self._checkpoint)
