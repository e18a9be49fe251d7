"""Data sharding: disjoint per rank, complete together, deterministic, resumable, elastic."""

import numpy as np
import pytest

from orchestrator.shared.data.stream import PackedSequences, ShardedStream, validation_indices


def consumed(world: int, steps: int, micro: int = 2, accum: int = 2, n: int = 37, start: int = 0) -> list[list[int]]:
    """Per step, the sorted union of every rank's samples."""
    streams = [ShardedStream(n, micro, accum, world, r, seed=7, consumed_samples=start) for r in range(world)]
    out = []
    for _ in range(steps):
        out.append(sorted(i for s in streams for i in np.concatenate(s.step_indices()).tolist()))
    return out


def test_ranks_are_disjoint_and_an_epoch_covers_everything():
    n, world, micro, accum = 48, 4, 3, 2  # global batch 24: exactly two steps per epoch
    streams = [ShardedStream(n, micro, accum, world, r, seed=1) for r in range(world)]
    seen = [np.concatenate([np.concatenate(s.step_indices()) for _ in range(2)]) for s in streams]
    for a in range(world):
        for b in range(a + 1, world):
            assert not set(seen[a]) & set(seen[b])
    assert sorted(np.concatenate(seen).tolist()) == list(range(n))


def test_epochs_are_reshuffled_deterministically():
    first = consumed(world=2, steps=6)
    assert first == consumed(world=2, steps=6)
    epoch0 = ShardedStream(40, 40, 1, 1, 0, seed=3).step_indices()[0]
    epoch1 = ShardedStream(40, 40, 1, 1, 0, seed=3, consumed_samples=40).step_indices()[0]
    assert sorted(epoch0) == sorted(epoch1) and not np.array_equal(epoch0, epoch1)


def test_state_round_trip_resumes_the_same_stream():
    a = ShardedStream(37, 2, 2, 2, 1, seed=7)
    for _ in range(3):
        a.step_indices()
    b = ShardedStream(37, 2, 2, 2, 1, seed=7)
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(x, y) for x, y in zip(a.step_indices(), b.step_indices()))


def test_elastic_resume_sees_the_same_samples_per_step():
    """Saved at world size 2, resumed at 1 or 4 with the same global batch: identical sample sets."""
    reference = consumed(world=2, micro=4, accum=2, steps=8)
    at_one = consumed(world=1, micro=4, accum=4, steps=4, start=4 * 16)
    at_four = consumed(world=4, micro=2, accum=2, steps=4, start=4 * 16)
    assert reference[4:] == at_one == at_four


def test_validation_slices_are_disjoint_per_rank():
    parts = [set(validation_indices(100, 8, 4, r).tolist()) for r in range(4)]
    assert all(len(p) == 8 for p in parts)
    assert len(set().union(*parts)) == 32


def test_packed_rows_are_consecutive_windows():
    seqs = PackedSequences(np.arange(20, dtype=np.uint16), seq_len=4)
    assert len(seqs) == 5
    assert seqs.rows(np.array([3, 0])).tolist() == [[12, 13, 14, 15], [0, 1, 2, 3]]


def mixed(world: int, steps: int, start: int = 0, sizes=(300, 50), weights=(3.0, 1.0), micro: int = 2, accum: int = 2) -> list[list[int]]:
    """Per step, every rank's sequence ids of a mixture, in global position order."""
    streams = [ShardedStream(list(sizes), micro, accum, world, r, seed=5, consumed_samples=start, weights=list(weights)) for r in range(world)]
    out = []
    for _ in range(steps):
        parts = [s.step_indices() for s in streams]  # [rank][micro-step] -> ids
        out.append([int(i) for k in range(accum) for r in range(world) for i in parts[r][k]])
    return out


def test_a_three_to_one_mixture_holds_per_step_within_binomial_tolerance():
    stream = ShardedStream([300, 50], 2, 2, 2, 0, seed=5, weights=[3.0, 1.0])
    steps = mixed(world=2, steps=200)
    share = [np.mean(stream.sources_of(np.array(ids)) == 0) for ids in steps]
    total = np.mean([stream.sources_of(np.array(ids)) == 0 for ids in steps])
    positions = 200 * 8
    assert abs(total - 0.75) <= 3 * np.sqrt(0.75 * 0.25 / positions)  # three binomial sigmas over 1,600 samples
    per_step_sigma = np.sqrt(0.75 * 0.25 / 8)
    assert all(abs(x - 0.75) <= 4 * per_step_sigma for x in share), share  # each step a draw of 8
    # the small source (50 sequences) cycles through whole epochs: each of its sequences once per epoch
    small = [i - 300 for ids in steps for i in ids if i >= 300]
    assert sorted(small[:50]) == list(range(50)) and sorted(small[50:100]) == list(range(50))


def test_a_mixture_resumes_and_changes_world_size_on_the_same_samples():
    reference = mixed(world=2, steps=12, micro=2, accum=2)
    assert reference == mixed(world=2, steps=12, micro=2, accum=2)  # deterministic from the seed
    resumed = mixed(world=2, steps=6, start=6 * 8)
    at_one = mixed(world=1, steps=6, start=6 * 8, micro=4, accum=2)
    assert reference[6:] == resumed
    assert [sorted(s) for s in reference[6:]] == [sorted(s) for s in at_one]
    a = ShardedStream([300, 50], 2, 2, 2, 1, seed=5, weights=[3.0, 1.0])
    a.step_indices()
    b = ShardedStream([300, 50], 2, 2, 2, 1, seed=5, weights=[3.0, 1.0])
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(x, y) for x, y in zip(a.step_indices(), b.step_indices()))
    other = ShardedStream([300, 50], 2, 2, 2, 1, seed=5, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="mixture weights"):
        other.load_state_dict(a.state_dict())


def test_one_source_reads_exactly_as_before_mixtures():
    """Checkpoints of single-source runs keep their data position: position p is sequence perm_e[p mod N]."""
    stream = ShardedStream(37, 2, 2, 1, 0, seed=7)
    ids = np.concatenate([np.concatenate(stream.step_indices()) for _ in range(30)])
    expected = [np.random.default_rng([7, p // 37]).permutation(37)[p % 37] for p in range(len(ids))]
    assert ids.tolist() == expected
    assert set(stream.state_dict().model_dump()) == {"consumed_samples", "seed", "num_sequences"}  # one source: no mixture written
