"""Request bodies (pydantic): OpenAI's `/v1/embeddings` and TEI's `/embed`, with our extensions.

Unknown fields are refused (422 naming them), so a misspelt `task` cannot silently fall back to the
default prompt. Inputs are texts or token-id arrays; `Inputs` is their checked, uniform form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

InputValue = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]

INPUT_HELP = (
    "a string, a list of strings, or token ids: a list of ints or a list of such lists (EmbeddingGemma ids "
    "from BOS to EOS, prompt included, used as they are)"
)


@dataclass(frozen=True)
class Inputs:
    """Checked inputs: `texts` or `token_ids` (exactly one is set)."""

    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_inputs(value: Any, name: str) -> Any:
    """Shape checks with messages that name the offending element; the value is returned unchanged."""
    if isinstance(value, str):
        _check_text(value, name)
        return value
    if not isinstance(value, list):
        raise ValueError(f"{name} must be {INPUT_HELP}; got {json_type(value)}")
    if not value:
        raise ValueError(f"{name} is an empty list; send at least one input")
    first = value[0]
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"{name}[{i}] is {json_type(item)}; a list of texts must hold only strings")
            _check_text(item, f"{name}[{i}]")
    elif _is_int(first):
        _check_ids(value, name)
    elif isinstance(first, list):
        for i, item in enumerate(value):
            if not isinstance(item, list):
                raise ValueError(f"{name}[{i}] is {json_type(item)}; a list of token-id arrays must hold only arrays")
            _check_ids(item, f"{name}[{i}]")
    else:
        raise ValueError(f"{name}[0] is {json_type(first)}; {name} must be {INPUT_HELP}")
    return value


def _check_text(text: str, name: str) -> None:
    if not text:
        raise ValueError(f"{name} is an empty string; send at least one character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} holds an unpaired surrogate at character {exc.start}; send valid Unicode") from None


def _check_ids(ids: list[Any], name: str) -> None:
    if not ids:
        raise ValueError(f"{name} is an empty token-id array")
    for j, token in enumerate(ids):
        if not _is_int(token):
            raise ValueError(f"{name}[{j}] is {json_type(token)}; token ids are integers")


def to_inputs(value: str | list) -> Inputs:
    if isinstance(value, str):
        return Inputs(texts=[value])
    if isinstance(value[0], str):
        return Inputs(texts=list(value))
    if isinstance(value[0], int):
        return Inputs(token_ids=[list(value)])
    return Inputs(token_ids=[list(ids) for ids in value])


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dimensions: StrictInt | None = Field(
        None, description="Matryoshka size (768, 512, 256 or 128): the first dimensions, re-normalised"
    )
    truncate: StrictBool | None = Field(
        None,
        description="cut inputs over the token limit (the X-Truncated-Inputs header says how many) instead of "
        "answering 413; default: the server's --auto-truncate",
    )
    titles: list[StrictStr | None] | None = Field(
        None,
        description="extension: one title (or null) per text; selects the document prompt `title: {title} | text: `",
    )


class EmbeddingsRequest(_Request):
    """OpenAI `POST /v1/embeddings`; `task`, `titles` and `truncate` are extensions OpenAI clients never send."""

    input: InputValue = Field(description=INPUT_HELP)
    model: StrictStr | None = Field(None, description="the served model id (see /v1/models); may be omitted")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes"
    )
    user: StrictStr | None = Field(None, description="accepted and ignored")
    task: StrictStr | None = Field(
        None, description="extension: prompt name (query, document, sts, ... see /info); default: the server's"
    )

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        return check_inputs(value, "input")


class EmbedRequest(_Request):
    """TEI `POST /embed`; `titles` is our extension."""

    inputs: InputValue = Field(description=INPUT_HELP)
    normalize: StrictBool = Field(True, description="L2-normalise (after the Matryoshka cut)")
    prompt_name: StrictStr | None = Field(
        None, description="prompt name (query, document, sts, ... see /info); default: the server's"
    )
    truncation_direction: Literal["right", "Right"] = Field(
        "right", description="only right truncation (keep the start): the model's prompt comes first"
    )

    @field_validator("inputs", mode="before")
    @classmethod
    def _check_inputs(cls, value: Any) -> Any:
        return check_inputs(value, "inputs")
