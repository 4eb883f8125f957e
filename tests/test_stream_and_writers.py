"""The streaming plumbing: `prefetch_map` (order, errors where they belong, early close, bounded read-ahead)
and the atomic `.npy` / JSONL writers."""

from __future__ import annotations

import json
import random
import threading
import time

import numpy as np
import pytest

from embeddinggemma.engine.stream import chunked, prefetch_map
from embeddinggemma.writers import JsonlWriter, NpyWriter, open_writer


class Source:
    """An iterable that counts how many items were pulled from it."""

    def __init__(self, count: int, fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.count, self.fail_at, self.error, self.pulled = count, fail_at, error, 0

    def __iter__(self):
        for i in range(self.count):
            if i == self.fail_at:
                raise self.error
            self.pulled += 1
            yield i


def drain(iterator) -> tuple[list, BaseException | None]:
    """The values an iterator gave before it raised, and what it raised."""
    got = []
    try:
        for value in iterator:
            got.append(value)
    except BaseException as exc:
        return got, exc
    return got, None


def test_order_is_preserved_whatever_the_timing():
    rng = random.Random(0)

    def slow_square(x: int) -> int:
        time.sleep(rng.random() / 500)
        return x * x

    assert list(prefetch_map(slow_square, range(50), prefetch=3)) == [x * x for x in range(50)]


def test_fn_runs_in_a_worker_thread():
    names = list(prefetch_map(lambda _: threading.current_thread().name, range(3)))
    assert all(name.startswith("embeddinggemma-prefetch") for name in names)


def test_an_error_in_fn_surfaces_where_its_result_would_have_been():
    def fn(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        return x

    got, error = drain(prefetch_map(fn, range(10), prefetch=2))
    assert got == [0, 1, 2] and isinstance(error, ValueError) and str(error) == "bad item 3"


def test_an_error_in_the_input_surfaces_after_the_items_before_it():
    got, error = drain(prefetch_map(lambda x: x, Source(10, fail_at=4, error=ValueError("line 5")), prefetch=2))
    assert got == [0, 1, 2, 3] and isinstance(error, ValueError) and str(error) == "line 5"


def test_keyboard_interrupt_in_the_input_is_not_delayed():
    got, error = drain(prefetch_map(lambda x: x, Source(10, fail_at=2, error=KeyboardInterrupt()), prefetch=2))
    assert got == [] and isinstance(error, KeyboardInterrupt)  # raised while reading ahead, not held back


@pytest.mark.parametrize("prefetch", [1, 3])
def test_read_ahead_is_bounded_and_early_close_stops_reading(prefetch):
    source = Source(1000)
    stream = prefetch_map(lambda x: x, source, prefetch=prefetch)
    for consumed in range(1, 6):
        next(stream)
        assert source.pulled <= consumed + prefetch  # the one handed out, plus `prefetch` ahead
    stream.close()
    pulled = source.pulled
    time.sleep(0.05)
    assert source.pulled == pulled <= 5 + prefetch
    assert not [t for t in threading.enumerate() if t.name.startswith("embeddinggemma-prefetch")]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="prefetch must be positive"):
        next(prefetch_map(lambda x: x, range(3), prefetch=0))
    with pytest.raises(ValueError, match="chunk size must be positive"):
        next(chunked(range(3), 0))


# -- writers ---------------------------------------------------------------------------------------


def test_npy_written_block_by_block_reads_back(tmp_path):
    blocks = [np.random.default_rng(i).standard_normal((n, 7)).astype(np.float32) for i, n in enumerate([3, 1, 5])]
    writer = open_writer(tmp_path / "out.npy")
    for block in blocks:
        writer.write(block)
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.concatenate(blocks))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]


def test_npy_header_has_room_for_any_row_count(tmp_path):
    writer = NpyWriter(tmp_path / "out.npy", dim=768)
    writer.write(np.zeros((1, 768), dtype=np.float32))
    size = writer._header_size
    writer.rows = 10**15  # the header is rewritten in place at close: it must not grow
    writer._write_header()
    assert writer._header_size == size
    writer.abort()


def test_abort_leaves_an_existing_output_as_it_was(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    writer = JsonlWriter(target)
    writer.write(np.ones((2, 3), dtype=np.float32), ids=["a", None])
    writer.abort()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_jsonl_rows(tmp_path):
    writer = open_writer(tmp_path / "OUT.JSONL")
    writer.write(np.array([[0.5, 0.25]], dtype=np.float32), ids=["a"])
    writer.write(np.array([[1.0, 0.0]], dtype=np.float32))
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "OUT.JSONL").read_text().splitlines()]
    assert rows == [{"index": 0, "id": "a", "embedding": [0.5, 0.25]}, {"index": 1, "embedding": [1.0, 0.0]}]


@pytest.mark.parametrize(
    ("name", "match"),
    [("a_dir.npy", "is a directory"), ("missing/out.npy", "does not exist"), ("out.csv", "use a .npy or .jsonl")],
)
def test_unwritable_outputs_are_refused_before_any_work(tmp_path, name, match):
    (tmp_path / "a_dir.npy").mkdir()
    with pytest.raises(ValueError, match=match):
        open_writer(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir.npy"]


def test_blocks_of_another_width_are_refused(tmp_path):
    writer = NpyWriter(tmp_path / "out.npy")
    writer.write(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected blocks of shape \(n, 4\)"):
        writer.write(np.zeros((2, 5), dtype=np.float32))
    writer.abort()
