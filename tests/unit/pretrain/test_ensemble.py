"""The LOO-normalised ensemble detector and PatchCore's concat embedding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.detectors import (
    Ensemble,
    EnsembleConfig,
    EnsembleMember,
    FeatureNormConfig,
    MemberScale,
    NotFittedError,
    PaDiMConfig,
    PatchCore,
    PatchCoreConfig,
    fit_ensemble,
    flat_features,
    image_scores,
    leave_one_out_maps,
    load_detector,
    parse_config,
    preset_config,
)
from pretrain.detectors.ensemble import combine_maps

SIZE = 32


def _features(n: int, seed: int) -> list[torch.Tensor]:
    """Flat list: three 'projected' levels (4x4, 4x4, 2x2), then two 'stride-8' levels."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 4, 4), (8, 4, 4), (10, 2, 2), (3, 8, 8), (5, 4, 4)]
    return [torch.randn(n, *s, generator=g) for s in shapes]


def _config() -> EnsembleConfig:
    return EnsembleConfig(
        members=(
            EnsembleMember(
                source="stride8",
                levels=(3, 4),
                detector=PatchCoreConfig(aggregation="concat", n_levels=2),
            ),
            EnsembleMember(source="adpretrain", levels=(0, 1, 2), detector=FeatureNormConfig()),
            EnsembleMember(source="adpretrain", levels=(0, 1, 2), detector=PaDiMConfig()),
        )
    )


def test_maps_are_the_mean_of_the_members_z_maps() -> None:
    train, test = _features(6, 0), _features(3, 1)
    ens = Ensemble(_config())
    loo = fit_ensemble(ens, train, SIZE)
    member_maps, scales = [], []
    for i, member in enumerate(ens.members):
        feats = ens.member_features(test, i)
        member_maps.append(member.anomaly_maps(feats, SIZE))
        member_loo = leave_one_out_maps(
            ens.config.members[i].detector, ens.member_features(train, i), SIZE
        )
        scales.append(MemberScale.from_loo(image_scores(member_loo)))
    expected = combine_maps(member_maps, scales)
    assert torch.allclose(ens.anomaly_maps(test, SIZE), expected, atol=1e-4)
    assert loo.shape == (6,)
    assert abs(float(ens.scale_mean[0]) - scales[0].mean) < 1e-9


def test_state_dict_round_trip_gives_the_same_maps() -> None:
    train, test = _features(5, 2), _features(2, 3)
    ens = Ensemble(_config())
    fit_ensemble(ens, train, SIZE)
    again = load_detector(ens.config, ens.state_dict())
    assert torch.equal(again.anomaly_maps(test, SIZE), ens.anomaly_maps(test, SIZE))
    assert parse_config(ens.config.model_dump(mode="json")) == ens.config


def test_unfitted_ensemble_refuses_to_score() -> None:
    ens = Ensemble(_config())
    ens.fit(_features(4, 4))  # members fitted, no scales yet
    with pytest.raises(NotFittedError):
        ens.anomaly_maps(_features(1, 5), SIZE)


def test_member_reading_missing_levels_is_named() -> None:
    ens = Ensemble(_config())
    with pytest.raises(ValueError, match="reads levels"):
        ens.fit(_features(4, 4)[:3])


def test_presets_read_their_sources_in_order() -> None:
    ens = preset_config("ensemble", 3)
    assert ens.sources() == ("adpretrain", "stride8")
    assert ens.members[0].levels == (3, 4) and ens.members[1].levels == (0, 1, 2)
    s8 = preset_config("s8-patchcore", 3)
    assert s8.sources() == ("stride8",) and s8.members[0].levels == (0, 1)
    assert s8.members[0].detector.pool_include_pad
    levels = _features(1, 0)
    flat = flat_features(ens, adpretrain=levels[:3], stride8=levels[3:])
    assert [f.shape for f in flat] == [f.shape for f in levels]
    assert len(flat_features(s8, stride8=levels[3:])) == 2
    with pytest.raises(ValueError, match="stride8"):
        flat_features(s8, adpretrain=levels[:3])
    with pytest.raises(ValueError, match="unknown ensemble preset"):
        preset_config("nope")


def test_patchcore_concat_embedding_is_anomalib_style() -> None:
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    det = PatchCore(aggregation="concat", n_levels=2)
    emb, grid = det.embed([a, b])
    pa = F.avg_pool2d(a, 3, 1, 1, count_include_pad=False)
    pb = F.interpolate(
        F.avg_pool2d(b, 3, 1, 1, count_include_pad=False),
        size=(8, 8),
        mode="bilinear",
        align_corners=False,
    )
    want = torch.cat([pa, pb], 1).permute(0, 2, 3, 1).reshape(-1, 8)
    assert grid == (8, 8) and det.config.target_dim == 8
    assert torch.allclose(emb, want, atol=1e-6)
    padded = PatchCore(aggregation="concat", n_levels=2, pool_include_pad=True).embed([a, b])[0]
    corner = F.avg_pool2d(a, 3, 1, 1)[0, :, 0, 0]  # zeros counted: 4 of 9 cells are data
    assert torch.allclose(padded[0, :3], corner, atol=1e-6)
    assert not torch.allclose(padded[0, :3], want[0, :3])


def test_position_aware_patchcore_matches_only_nearby_positions() -> None:
    g = torch.Generator().manual_seed(0)
    refs = [torch.randn(2, 4, 6, 6, generator=g)]
    det = PatchCore(n_levels=1, neighbourhood=1, position_window=1)
    det.fit(refs)
    # a query equal to reference 0 everywhere but with its first column moved to the last:
    # the global search still finds those patches, the local one (window 1) does not
    moved = refs[0][:1].clone()
    moved[..., -1] = refs[0][:1, :, :, 0]
    glob = PatchCore(n_levels=1, neighbourhood=1)
    glob.fit(refs)
    local_d, global_d = det([moved])[0][0], glob([moved])[0][0]
    assert torch.allclose(global_d[:, :-1], torch.zeros(6, 5), atol=1e-3)
    assert torch.allclose(global_d[:, -1], torch.zeros(6), atol=1e-3)
    assert (local_d[:, -1] > 0.5).all()  # the moved column is 5 cells from home
    assert torch.allclose(local_d[:, :-1], torch.zeros(6, 5), atol=1e-3)
    too_big = PatchCore(n_levels=1, neighbourhood=1, position_window=1, coreset_threshold=10)
    with pytest.raises(ValueError, match="whole bank"):
        too_big.fit(refs)


def test_single_member_keeps_raw_scores() -> None:
    train, test = _features(4, 6), _features(2, 7)
    ens = Ensemble(preset_config("s8-patchcore", 3))
    flat_train = flat_features(ens.config, stride8=train[3:])
    loo = fit_ensemble(ens, flat_train, SIZE)
    member = ens.members[0]
    raw = member.anomaly_maps(test[3:], SIZE)
    assert torch.allclose(ens.anomaly_maps(test[3:], SIZE), raw, atol=1e-5)
    expected_loo = leave_one_out_maps(ens.config.members[0].detector, train[3:], SIZE)
    assert torch.allclose(loo, image_scores(expected_loo), atol=1e-5)
    assert (float(ens.scale_mean[0]), float(ens.scale_std[0])) == (0.0, 1.0)


def test_full_shot_calibration_scores_an_evenly_spaced_subset(monkeypatch) -> None:
    from pretrain.detectors import leave_one_out as loo_module

    assert loo_module.calibration_subset(8) == list(range(8))
    assert loo_module.calibration_subset(209)[:2] == [0, 3]
    assert loo_module.calibration_subset(209)[-1] == 208
    assert len(loo_module.calibration_subset(209)) == 64
    train = _features(6, 4)
    full = fit_ensemble(Ensemble(_config()), train, SIZE)
    monkeypatch.setattr(loo_module, "CALIBRATION_MAX_IMAGES", 4)
    chosen = loo_module.calibration_subset(6)
    assert chosen == [0, 2, 3, 5]
    sub = fit_ensemble(Ensemble(_config()), train, SIZE)
    # each chosen reference is still scored against all the other five: the same maps, but
    # the members' z-scales come from 4 scores instead of 6
    assert sub.shape == (4,)
    member = Ensemble(_config()).config.members[0]
    maps = leave_one_out_maps(member.detector, Ensemble(_config()).member_features(train, 0), SIZE)
    some = leave_one_out_maps(
        member.detector, Ensemble(_config()).member_features(train, 0), SIZE, images=chosen
    )
    assert torch.allclose(some, maps[chosen], atol=1e-5)
    assert full.shape == (6,)


def test_an_own_input_size_is_for_stride8_only_ensembles() -> None:
    """The default preset reads 256 px images; the projector runs at the engine's size, so an
    ensemble with a projected member cannot have a size of its own."""
    from pretrain.detectors.ensemble import S8_INPUT_SIZE

    default = preset_config("s8-patchcore")
    assert default.image_size == S8_INPUT_SIZE == 256
    assert default.members[0].detector.coreset_threshold == 13_062  # 10k x (256 / 224)^2
    assert preset_config("ensemble").image_size is None
    assert parse_config(default.model_dump()) == default  # stored records keep the size
    with pytest.raises(ValueError, match="stride8 features only"):
        EnsembleConfig.model_validate({**_config().model_dump(), "image_size": 256})
    with pytest.raises(ValueError, match="multiple of 16"):
        EnsembleConfig(members=default.members, image_size=250)


def test_s8_patchcore_takes_a_product_input_size() -> None:
    """`adqc product add --image-size`: the member's coreset limits scale with the patches per
    image; the projector's preset refuses a size, and sizes outside 64-512 are named."""
    own = preset_config("s8-patchcore", image_size=320)
    assert own.image_size == 320
    assert own.members[0].detector.coreset_threshold == 20_409  # 10k x (320 / 224)^2
    assert parse_config(own.model_dump()) == own
    with pytest.raises(ValueError, match="setting of s8-patchcore only"):
        preset_config("ensemble", image_size=320)
    for bad in (48, 250, 528):
        with pytest.raises(ValueError, match=f"multiple of 16 from 64 to 512 px, not {bad}"):
            preset_config("s8-patchcore", image_size=bad)
