"""Pieces of multi-process runs that need no process group: sampling shares."""

import pytest

from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler
from wdm_bundle.engines import VolumeGenerator
from wdm_bundle.networks import WaveletDiffusionUNet


def _generator(tmp_path, **kw):
    net = WaveletDiffusionUNet(image_channels=1, channels=(8, 8), num_res_blocks=1, norm_num_groups=4)
    scheduler = make_scheduler("ddim", 2)
    return VolumeGenerator(net, WaveletDiffusionInferer(scheduler), scheduler, (1, 16, 16, 16), tmp_path, **kw)


def test_batches_split_round_robin_and_cover_all_once(tmp_path):
    single = _generator(tmp_path, num_samples=7, batch_size=2).batches()
    assert single == [[0, 1], [2, 3], [4, 5], [6]]
    shares = [_generator(tmp_path, num_samples=7, batch_size=2, rank=r, world_size=3).batches() for r in range(3)]
    assert shares == [[[0, 1], [6]], [[2, 3]], [[4, 5]]]
    # more ranks than batches: the extra ranks have nothing to do
    assert _generator(tmp_path, num_samples=2, batch_size=2, rank=1, world_size=2).batches() == []
    with pytest.raises(ValueError, match="rank"):
        _generator(tmp_path, rank=2, world_size=2)


def test_split_run_writes_only_own_share_with_global_names(tmp_path):
    written = _generator(tmp_path, num_samples=3, batch_size=1, rank=1, world_size=2, progress=False).run()
    assert [p.split("/")[-1] for p in written] == ["sample_0001.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample_0001.nii.gz", "sample_0001.png"]
