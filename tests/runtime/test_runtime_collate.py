"""Pure tensor shaping: buckets, padding, concat/chunk/split, and batched == per-request eager outputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_cases import BERT_ARGS, MLP_ARGS, mlp_request

from neuron_runtime import zoo
from neuron_runtime.artifact import verify
from neuron_runtime.batching import collate
from neuron_runtime.compile import CompileResult, compile_artifact
from neuron_runtime.jobs import BatchJob, Graphs, tensors_from_wire
from neuron_runtime.model import signature_of


def _load(result: CompileResult) -> Graphs:
    manifest, _ = verify(result.directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return {(g.bucket, g.batch_size): torch.jit.load(str(result.directory / g.file)) for g in manifest.graphs}


@pytest.mark.parametrize(("length", "bucket"), [(1, 8), (8, 8), (9, 16), (16, 16), (17, None)])
def test_choose_bucket(length: int, bucket: int | None) -> None:
    assert collate.choose_bucket(length, [8, 16]) == bucket


@pytest.mark.parametrize(
    ("rows", "sizes", "chosen"),
    [
        (1, [1, 2, 4, 8], 1),
        (2, [1, 2, 4, 8], 2),
        (3, [1, 2, 4, 8], 4),
        (5, [1, 2, 4, 8], 8),
        (8, [1, 2, 4, 8], 8),
        (9, [1, 2, 4, 8], 8),  # beyond the largest: chunks of the largest (dynamic batch)
        (3, [4], 4),
        (30, [4], 4),
        (1, [3, 16], 3),
        (4, [3, 16], 16),
    ],
)
def test_choose_batch_size_is_the_smallest_that_fits(rows: int, sizes: list[int], chosen: int) -> None:
    assert collate.choose_batch_size(rows, sizes) == chosen


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 64), sizes=st.sets(st.integers(1, 32), min_size=1, max_size=8).map(sorted))
def test_choose_batch_size_properties(rows: int, sizes: list[int]) -> None:
    chosen = collate.choose_batch_size(rows, sizes)
    assert chosen in sizes
    if rows <= sizes[-1]:
        assert chosen >= rows
        assert all(s < rows for s in sizes if s < chosen)  # no smaller size would have held the rows
    else:
        assert chosen == sizes[-1]


def test_choose_batch_size_needs_a_size() -> None:
    with pytest.raises(ValueError, match="no traced batch sizes"):
        collate.choose_batch_size(1, [])


def test_signature_lists_every_traced_batch_size(mlp_artifact: CompileResult) -> None:
    sig = signature_of(mlp_artifact.manifest)
    assert (sig.batch_size, sig.batch_sizes, sig.traced_batch_sizes()) == (4, (4,), (4,))
    assert collate.Signature(inputs=(), batch_size=8).traced_batch_sizes() == (8,)


def test_pad_axis_zero_pads() -> None:
    t = torch.arange(6).reshape(2, 3)
    assert collate.pad_axis(t, 1, 5).tolist() == [[0, 1, 2, 0, 0], [3, 4, 5, 0, 0]]
    assert collate.pad_axis(t, 1, 3) is t
    with pytest.raises(ValueError, match="cannot pad"):
        collate.pad_axis(t, 1, 2)


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.integers(1, 5), min_size=1, max_size=6), size=st.integers(1, 6))
def test_concat_chunk_unchunk_split_round_trip(rows: list[int], size: int) -> None:
    generator = torch.Generator().manual_seed(sum(rows) * 31 + size)
    requests = [
        [torch.randn(n, 3, generator=generator), torch.randint(0, 9, (n, 2), generator=generator)] for n in rows
    ]
    joined = collate.concat(requests)
    chunks = collate.chunk(joined, size)
    assert all(t.shape[0] == size for c, _ in chunks for t in c)
    assert sum(real for _, real in chunks) == sum(rows)
    # "run" an identity model on every chunk, then put the pieces back
    back = collate.split(collate.unchunk([c for c, _ in chunks], [r for _, r in chunks]), rows)
    for got, want in zip(back, requests, strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_pad_rows_repeats_the_first_row() -> None:
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert collate.pad_rows(t, 4).tolist() == [[1, 2], [3, 4], [1, 2], [1, 2]]


def test_split_checks_row_counts() -> None:
    with pytest.raises(ValueError, match="the batch had 3"):
        collate.split([torch.zeros(2, 1)], [1, 2])
    with pytest.raises(ValueError, match="different non-batch shapes"):
        collate.concat([[torch.zeros(1, 2)], [torch.zeros(1, 3)]])


def test_prepare_rejects_bad_requests(bert_artifact: CompileResult) -> None:
    sig = signature_of(bert_artifact.manifest)
    ids = torch.ones(1, 5, dtype=torch.int64)
    cases = [
        ({"input_ids": ids}, "missing input"),
        ({"input_ids": ids, "attention_mask": ids, "x": ids}, "unknown input"),
        ({"input_ids": ids.float(), "attention_mask": ids}, "dtype"),
        ({"input_ids": ids[0], "attention_mask": ids}, "rank"),
        ({"input_ids": ids, "attention_mask": torch.ones(2, 5, dtype=torch.int64)}, "batch dimension"),
        ({"input_ids": ids, "attention_mask": torch.ones(1, 6, dtype=torch.int64)}, "length 6"),
        (
            {"input_ids": torch.ones(1, 17, dtype=torch.int64)}
            | {"attention_mask": torch.ones(1, 17, dtype=torch.int64)},
            "exceeds the largest traced bucket 16",
        ),
    ]
    for inputs, fragment in cases:
        with pytest.raises(collate.RequestError, match=fragment):
            collate.prepare(sig, inputs)
    with pytest.raises(collate.RequestError, match="at most 2"):
        collate.prepare(
            sig,
            {"input_ids": torch.ones(3, 4, dtype=torch.int64), "attention_mask": torch.ones(3, 4, dtype=torch.int64)},
            max_rows=2,
        )


def test_prepare_pads_to_the_bucket(bert_artifact: CompileResult) -> None:
    sig = signature_of(bert_artifact.manifest)
    ids = torch.arange(1, 6).reshape(1, 5)
    prepared = collate.prepare(sig, {"input_ids": ids, "attention_mask": torch.ones(1, 5, dtype=torch.int64)})
    assert (prepared.bucket, prepared.length, prepared.rows) == (8, 5, 1)
    assert prepared.tensors[0].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0]]
    assert prepared.tensors[1].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]


def run_whole(graphs: Graphs, batch: list[collate.Prepared], size: int) -> list[list[torch.Tensor]]:
    return [tensors_from_wire(w) for w in BatchJob.of(batch, size, [None])(graphs)]


def test_batched_padded_mlp_equals_eager_per_request(mlp_artifact: CompileResult) -> None:
    graphs = _load(mlp_artifact)
    sig = signature_of(mlp_artifact.manifest)
    eager = zoo.tiny_mlp(**MLP_ARGS)
    generator = torch.Generator().manual_seed(5)
    requests = [torch.randn(n, 8, generator=generator) for n in (1, 2, 1)]  # 4 rows = one traced batch
    prepared = [collate.prepare(sig, {"x": x}) for x in requests]
    with torch.inference_mode():
        outputs = run_whole(graphs, prepared, sig.batch_size)
        for got, x in zip(outputs, requests, strict=True):
            torch.testing.assert_close(got[0], eager(x), rtol=1e-5, atol=1e-5)
        # a short batch (padded with repeated rows) gives the same answers
        short = run_whole(graphs, prepared[:1], sig.batch_size)
        torch.testing.assert_close(short[0][0], eager(requests[0]), rtol=1e-5, atol=1e-5)


def test_each_batch_is_padded_to_the_smallest_traced_size_only(tmp_path: Path) -> None:
    result = compile_artifact(mlp_request(batch_sizes=[1, 2, 4]), tmp_path)
    graphs = _load(result)
    sig = signature_of(result.manifest)
    assert sig.traced_batch_sizes() == (1, 2, 4)
    eager = zoo.tiny_mlp(**MLP_ARGS)
    generator = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        for rows in [(1,), (1, 1), (2, 1), (1, 2, 1)]:
            requests = [torch.randn(n, 8, generator=generator) for n in rows]
            prepared = [collate.prepare(sig, {"x": x}) for x in requests]
            size = collate.choose_batch_size(sum(rows), sig.traced_batch_sizes())
            assert size == {1: 1, 2: 2, 3: 4, 4: 4}[sum(rows)]
            outputs = run_whole({k: v for k, v in graphs.items() if k[1] == size}, prepared, size)
            for got, x in zip(outputs, requests, strict=True):
                torch.testing.assert_close(got[0], eager(x), rtol=1e-5, atol=1e-5)


def test_bucketed_bert_equals_eager_on_unpadded_sequences(bert_artifact: CompileResult) -> None:
    graphs = _load(bert_artifact)
    sig = signature_of(bert_artifact.manifest)
    eager = zoo.bert_like(**BERT_ARGS)
    generator = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        for lengths in [(3, 7), (5,), (12, 9), (16,)]:
            reqs = [torch.randint(1, 50, (1, n), generator=generator) for n in lengths]
            prepared = [collate.prepare(sig, {"input_ids": r, "attention_mask": torch.ones_like(r)}) for r in reqs]
            groups: dict[int | None, list[collate.Prepared]] = {}
            for p in prepared:
                groups.setdefault(p.bucket, []).append(p)
            for group in groups.values():
                outputs = run_whole(graphs, group, sig.batch_size)
                for got, p in zip(outputs, group, strict=True):
                    n = p.length
                    assert n is not None
                    ids = p.tensors[0][:, :n]
                    want = eager(ids, torch.ones_like(ids))
                    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-5)


def test_crop_follows_the_bucket_axis() -> None:
    out = torch.arange(2 * 8).reshape(2, 8)
    assert collate.crop([out], [1], 5)[0].shape == (2, 5)
    assert collate.crop([out], [None], 5)[0].shape == (2, 8)
