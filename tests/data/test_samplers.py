import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader

from wdm_bundle.data import ResumableSampler


def _batches(loader, n):
    """The first ``n`` batches of ``loader`` as ignite draws them: one iterator, restarted when exhausted."""
    out, it = [], iter(loader)
    while len(out) < n:
        try:
            out.append(next(it).tolist())
        except StopIteration:
            it = iter(loader)
    return out


def test_each_pass_a_new_order_from_seed_and_pass_only():
    data = list(range(10))
    sampler = ResumableSampler(data, seed=3)
    before = torch.get_rng_state()
    passes = [list(sampler) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), before)  # the global random state is untouched
    assert all(sorted(p) == data for p in passes) and len({tuple(p) for p in passes}) == 3
    assert [ResumableSampler(data, seed=3).order(p) for p in range(3)] == passes
    assert ResumableSampler(data, seed=4).order(0) != passes[0]
    assert list(ResumableSampler(data, shuffle=False)) == data


def test_shards_are_disjoint_and_padded_evenly():
    data = list(range(7))
    shards = [ResumableSampler(data, seed=1, num_replicas=3, rank=r) for r in range(3)]
    orders = [s.order(0) for s in shards]
    assert [len(s) for s in shards] == [3, 3, 3] and [len(o) for o in orders] == [3, 3, 3]
    flat = sorted(i for o in orders for i in o)
    assert set(flat) == set(data) and len(flat) == 9  # two indices repeated to pad 7 to 9
    uneven = [ResumableSampler(data, num_replicas=3, rank=r, even_divisible=False) for r in range(3)]
    assert sorted(i for s in uneven for i in s) == data and [len(s) for s in uneven] == [3, 2, 2]
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(data, num_replicas=2, rank=2)


@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_at_continues_the_batch_stream(drop_last):
    data = list(range(11))

    def loader():
        return DataLoader(data, batch_size=3, sampler=ResumableSampler(data, seed=5), drop_last=drop_last)

    straight = _batches(loader(), 14)
    per_pass = 3 if drop_last else 4
    first = [i for b in straight[:per_pass] for i in b]
    assert len(set(first)) == len(first) == (9 if drop_last else 11)
    for k in (0, 2, per_pass, 7, 13):
        resumed = loader()
        resumed.sampler.resume_at(k, 3, drop_last)
        assert _batches(resumed, 14 - k) == straight[k:], k
    with pytest.raises(ValueError, match="no batch"):
        ResumableSampler(data[:2]).resume_at(0, 3, drop_last=True)


def test_passes_inside_one_ignite_epoch_differ():
    """ignite keeps the iterator across an epoch longer than a pass: every restart is a new pass, a new order."""
    data = list(range(12))
    seen = []
    engine = Engine(lambda e, batch: seen.append(tuple(batch.tolist())))
    loader = DataLoader(data, batch_size=6, sampler=ResumableSampler(data, num_replicas=2, rank=0))
    engine.run(loader, max_epochs=1, epoch_length=4)  # one batch = rank 0's whole pass
    assert len(set(seen)) == 4
