"""The server's limits and defaults (one frozen object, built by the CLI or by a caller of `create_app`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from embeddinggemma.checkpoint import DEFAULT_MODEL


@dataclass(frozen=True)
class ServeSettings:
    """Limits and defaults of one server.

    - `model_name`: the id clients send as `model` and `/v1/models` lists.
    - `max_batch_tokens`: tokens per engine call (one batch); a longer input runs alone.
    - `max_client_batch_size`: inputs per request (more is a 413).
    - `max_concurrent_requests`: requests being read, queued or embedded at once (more is a 429).
    - `max_queue_tokens`: tokens waiting for the model (more is a 429; one request above it is a 413).
    - `payload_limit`: request body bytes (more is a 413).
    - `default_task`: the prompt for requests that name no task and send no titles (None: no prompt).
    - `auto_truncate`: cut over-long inputs even when a request does not ask (`truncate`).
    - `allow_untrained_dimensions`: accept `dimensions` outside the trained Matryoshka sizes, with a
      warning header, instead of refusing them.
    - `api_keys`: Bearer tokens that are accepted; empty means no authentication.
    """

    model_name: str = DEFAULT_MODEL
    max_batch_tokens: int = 2048
    max_client_batch_size: int = 256
    max_concurrent_requests: int = 512
    max_queue_tokens: int = 1 << 20
    payload_limit: int = 2_000_000
    default_task: str | None = "query"
    auto_truncate: bool = False
    allow_untrained_dimensions: bool = False
    api_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                flag = "--" + field.name.replace("_", "-")
                raise ValueError(f"{field.name} ({flag}) must be a positive integer, got {value!r}")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("API keys must be non-empty and carry no surrounding whitespace")
