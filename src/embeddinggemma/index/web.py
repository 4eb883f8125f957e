"""HTTP for an index: ``POST /search`` (JSON) and a search page at ``/``, as a FastAPI router.

The server mounts :func:`create_router` when started with an index; :func:`create_app` wraps the same
router in an app of its own (tests, or serving an index alone under any ASGI server)::

    POST /search  {"query": "parse arguments", "k": 5, "mode": "hybrid"}
    -> {"results": [{"path": "library/argparse.rst", "line": 12, "title": "...", "snippet": "...",
                     "score": 0.03}, ...]}

Searching runs the model and the database in FastAPI's thread pool, so the event loop stays free; the
:class:`Searcher` serialises access to its database connection. A server with its own batching queue
passes ``embed_query`` (an async function of the query and its task): queries are then embedded
through that queue, together with the server's other requests, and only the lookup runs in the thread
pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from embeddinggemma.index.searcher import Searcher

__all__ = ["MAX_K", "SearchRequest", "create_app", "create_router"]

MAX_K = 100

# (query, task) -> the query's embedding with that task's prompt: full width or the index's dim
EmbedQuery = Callable[[str, str], Awaitable[Any]]


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4096)
    k: int = Field(default=10, ge=1, le=MAX_K)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    task: str = "query"


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Search</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  form { display: flex; gap: .5rem; margin-bottom: 1.2rem; }
  input[type=search] { flex: 1; font-size: 1rem; padding: .45rem .6rem; }
  ol { padding-left: 1.4rem; }
  li { margin-bottom: 1rem; }
  .path { font-family: ui-monospace, monospace; color: #0b5394; }
  .title { font-weight: 600; margin-left: .5rem; }
  .score { color: #888; font-size: .85em; margin-left: .5rem; }
  .snippet { margin: .2rem 0 0; color: #444; }
  #status { color: #888; }
</style>
</head>
<body>
<h1>Search</h1>
<form id="search-form">
  <input type="search" id="query" name="query" placeholder="Search the indexed files" autofocus required>
  <select id="mode" name="mode">
    <option value="hybrid" selected>hybrid</option>
    <option value="dense">dense</option>
    <option value="bm25">bm25</option>
  </select>
  <button type="submit" id="go">Search</button>
</form>
<p id="status"></p>
<ol id="results"></ol>
<script>
const form = document.getElementById("search-form");
const list = document.getElementById("results");
const status = document.getElementById("status");
function span(cls, text) {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;  // text, never HTML: snippets come from arbitrary files
  return el;
}
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = document.getElementById("query").value;
  const mode = document.getElementById("mode").value;
  status.textContent = "Searching...";
  list.replaceChildren();
  try {
    const response = await fetch("search", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({query: query, k: 10, mode: mode}),
    });
    const body = await response.json();
    if (!response.ok) {
      const reason = typeof body.detail === "string" ? body.detail : body.error && body.error.message;
      throw new Error(reason || response.statusText);
    }
    for (const r of body.results) {
      const item = document.createElement("li");
      const where = r.page ? `${r.path}#page=${r.page}:${r.line}` : `${r.path}:${r.line}`;
      item.append(span("path", where), span("title", r.title || ""), span("score", r.score.toFixed(4)));
      const text = document.createElement("p");
      text.className = "snippet";
      text.textContent = r.snippet;
      item.append(text);
      list.append(item);
    }
    status.textContent = body.results.length ? `${body.results.length} results` : "No results";
  } catch (error) {
    status.textContent = `Error: ${error.message}`;
  }
});
</script>
</body>
</html>
"""


def create_router(searcher: Searcher, embed_query: EmbedQuery | None = None) -> APIRouter:
    """``GET /`` (the page) and ``POST /search`` over one open :class:`Searcher`.

    ``embed_query``: embeds dense and hybrid queries instead of ``searcher.embedder`` (which still
    vouches that the index was built with this model); a ``ValueError`` it raises is a 400.
    """
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE

    @router.post("/search")
    async def search(request: SearchRequest) -> dict[str, Any]:
        if request.mode != "bm25" and searcher.embedder is None:
            raise HTTPException(400, detail="this server has no model loaded; use mode 'bm25'")
        vector = None
        try:
            if embed_query is not None and request.mode != "bm25" and request.query.strip():
                vector = await embed_query(request.query, request.task)
            results = await run_in_threadpool(
                searcher.search, request.query, k=request.k, mode=request.mode, task=request.task, vector=vector
            )
        except ValueError as exc:  # an empty query after trimming, an unknown task
            raise HTTPException(400, detail=str(exc)) from None
        return {"results": [r.to_json() for r in results]}

    return router


def create_app(searcher: Searcher) -> FastAPI:
    """An app serving only the index (the page and ``POST /search``)."""
    app = FastAPI(title="embeddinggemma index search")
    app.include_router(create_router(searcher))
    return app
