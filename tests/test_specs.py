import pytest

from keras_resnet import specs


@pytest.mark.parametrize("depth, variant", [(18, "v1.5"), (50, "v1.5"), (200, "v1.5"),
                                            (20, "cifar"), (1202, "cifar")])
def test_default_variant(depth, variant):
    assert specs.default_variant(depth) == variant


def test_cifar_depth_is_6n_plus_2():
    spec = specs.resnet_spec(26, "cifar")
    assert [s.repeats for s in spec.stages] == [4, 4, 4]
    assert [s.filters for s in spec.stages] == [16, 32, 64]
    assert spec.shortcut == "zeropad" and spec.stem == "cifar"
    # 50 is also 6n+2: variant="cifar" builds the CIFAR net of that depth.
    assert [s.repeats for s in specs.resnet_spec(50, "cifar").stages] == [8, 8, 8]


def test_option_b_alias():
    assert specs.resnet_spec(20, shortcut="B").shortcut == "projection"


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=26), r"Unknown depth 26.*\[18, 34, 50, 101, 152, 200\].*6n\+2"),
    (dict(depth=51), r"Unknown depth 51"),
    (dict(depth=21, variant="cifar"), r"6n\+2"),
    (dict(depth=56, variant="v1"), r"no depth 56"),
    (dict(depth=50, variant="v3"), r"Unknown variant 'v3'.*v1d"),
    (dict(depth=18, groups=32, width_per_group=4), r"basic-block networks .* groups=1"),
    (dict(depth=50, groups=0), r"groups must be a positive integer"),
    (dict(depth=50, se_ratio=2.0), r"se_ratio"),
    (dict(depth=20, shortcut="C"), r"Unknown shortcut 'C'"),
])
def test_bad_spec_names_the_allowed_values(kwargs, match):
    depth = kwargs.pop("depth")
    with pytest.raises(ValueError, match=match):
        specs.resnet_spec(depth, **kwargs)


def test_variants_differ_where_documented():
    v1, v15, v1d, v2 = (specs.resnet_spec(50, v) for v in ("v1", "v1.5", "v1d", "v2"))
    assert (v1.stride_on, v15.stride_on) == ("1x1", "3x3")
    assert (v1d.stem, v1d.shortcut) == ("deep", "avgpool")
    assert v2.preact and v2.stride_in_last_block
    assert [s.stride for s in v2.stages] == [2, 2, 2, 1]
    assert [s.stride for s in v15.stages] == [1, 2, 2, 2]


def test_width_per_group_must_split_a_custom_stage_evenly():
    # torchvision truncates 40 * 4 / 64 = 2.5 silently; we refuse.
    with pytest.raises(ValueError, match=r"width_per_group=4 does not divide evenly into stage width 40"):
        specs.ResNetSpec((specs.StageSpec("bottleneck", 40, 1),), groups=8, width_per_group=4)
