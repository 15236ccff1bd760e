"""The ResNet family as data: a depth and variant resolve to a `ResNetSpec`."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, cast

BlockType = Literal["basic", "bottleneck"]
StemType = Literal["imagenet", "deep", "cifar"]
ShortcutType = Literal["projection", "avgpool", "zeropad"]

BLOCK_TYPES = ("basic", "bottleneck")
STEM_TYPES = ("imagenet", "deep", "cifar")
SHORTCUT_TYPES = ("projection", "avgpool", "zeropad")
# He et al. 2016 call the CIFAR shortcuts "option A" (zero-padded identity) and "option B".
SHORTCUT_ALIASES = {"A": "zeropad", "B": "projection"}

IMAGENET_VARIANTS = ("v1", "v1.5", "v1d", "v2")
VARIANTS = (*IMAGENET_VARIANTS, "cifar")

IMAGENET_DEPTHS: dict[int, tuple[BlockType, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: `repeats` blocks of `block` type; `stride` downsamples once per stage.

    `filters` is the stage's base width: a basic block outputs `filters` channels, a
    bottleneck block `4 * filters` (torchvision's `planes`).
    """

    block: BlockType
    filters: int
    repeats: int
    stride: int = 1


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """A whole network: stem, stages and the choices that distinguish the variants.

    - `stem`: "imagenet" (7x7/2 conv + 3x3/2 max-pool), "deep" (ResNet-D: three 3x3
      convs + max-pool) or "cifar" (one 3x3 conv, no pooling).
    - `preact`: pre-activation (v2) blocks, with a final BN-ReLU before pooling.
    - `stride_on`: where a bottleneck downsamples, "1x1" (v1) or "3x3" (v1.5).
    - `stride_in_last_block`: keras.applications v2 strides in a stage's last block.
    - `shortcut`: how a block whose shape changes maps its input, "projection" (1x1 conv),
      "avgpool" (ResNet-D: 2x2 average pool, then 1x1 conv) or "zeropad" (CIFAR option A).
    - `groups`, `width_per_group`: grouped (ResNeXt) and wide bottlenecks, as torchvision.
    - `se_ratio`: squeeze-excitation reduction ratio (None: no SE).
    """

    stages: tuple[StageSpec, ...]
    stem: StemType = "imagenet"
    stem_filters: int = 64
    preact: bool = False
    stride_on: Literal["1x1", "3x3"] = "3x3"
    stride_in_last_block: bool = False
    shortcut: ShortcutType = "projection"
    groups: int = 1
    width_per_group: int = 64
    se_ratio: float | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("A ResNetSpec needs at least one stage.")
        for stage in self.stages:
            if stage.block not in BLOCK_TYPES:
                raise ValueError(f"Unknown block type {stage.block!r}; use one of {BLOCK_TYPES}.")
            if stage.filters < 1 or stage.repeats < 1 or stage.stride < 1:
                raise ValueError(f"Stage filters, repeats and stride must be positive: {stage}.")
        if self.stem not in STEM_TYPES:
            raise ValueError(f"Unknown stem {self.stem!r}; use one of {STEM_TYPES}.")
        if self.shortcut not in SHORTCUT_TYPES:
            raise ValueError(
                f"Unknown shortcut {self.shortcut!r}; use one of {SHORTCUT_TYPES} (or 'A' / 'B' for the CIFAR options)."
            )
        if self.stride_on not in ("1x1", "3x3"):
            raise ValueError(f"stride_on must be '1x1' or '3x3', got {self.stride_on!r}.")
        if not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"groups must be a positive integer, got {self.groups!r}.")
        if not isinstance(self.width_per_group, int) or self.width_per_group < 1:
            raise ValueError(f"width_per_group must be a positive integer, got {self.width_per_group!r}.")
        if self.se_ratio is not None and not 0 < self.se_ratio <= 1:
            raise ValueError(f"se_ratio must be in (0, 1], got {self.se_ratio!r}.")
        grouped = self.groups != 1 or self.width_per_group != 64
        if grouped and all(stage.block == "basic" for stage in self.stages):
            raise ValueError(
                "groups and width_per_group shape bottleneck blocks; basic-block networks "
                "(depths 18, 34 and the CIFAR nets) support only groups=1 and width_per_group=64. "
                "Use a bottleneck depth (50, 101, 152, 200) for ResNeXt or wide ResNets."
            )
        for stage in self.stages:
            if stage.block == "bottleneck" and (stage.filters * self.width_per_group) % 64:
                raise ValueError(
                    f"width_per_group={self.width_per_group} does not divide evenly into "
                    f"stage width {stage.filters}: filters * width_per_group / 64 must be a "
                    "whole number (torchvision's meaning; e.g. 4 for ResNeXt 32x4d, 128 for "
                    "Wide ResNet-50-2)."
                )

    @property
    def num_blocks(self) -> int:
        return sum(stage.repeats for stage in self.stages)


def valid_depths_message() -> str:
    return (
        f"ImageNet depths {sorted(IMAGENET_DEPTHS)} (variants {list(IMAGENET_VARIANTS)}), "
        f"CIFAR depths {list(CIFAR_DEPTHS)} or any 6n+2 with variant='cifar'"
    )


def default_variant(depth: int) -> str:
    """The variant a bare `depth` means: v1.5 for ImageNet depths, "cifar" for CIFAR ones."""
    if depth in IMAGENET_DEPTHS:
        return "v1.5"
    if depth in CIFAR_DEPTHS:
        return "cifar"
    raise ValueError(f"Unknown depth {depth!r}. Valid: {valid_depths_message()}.")


def resnet_spec(
    depth: int,
    variant: str | None = None,
    *,
    groups: int = 1,
    width_per_group: int = 64,
    se_ratio: float | None = None,
    shortcut: str | None = None,
) -> ResNetSpec:
    """Resolve a named depth and variant into a `ResNetSpec`."""
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ValueError(f"depth must be an integer, got {depth!r}. Valid: {valid_depths_message()}.")
    variant = default_variant(depth) if variant is None else variant
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; use one of {list(VARIANTS)}.")
    if shortcut is not None:
        shortcut = SHORTCUT_ALIASES.get(shortcut, shortcut)

    def spec(stages: tuple[StageSpec, ...], default_shortcut: str, **choices: Any) -> ResNetSpec:
        kind = cast(ShortcutType, shortcut or default_shortcut)  # checked by ResNetSpec
        return ResNetSpec(
            stages, shortcut=kind, groups=groups, width_per_group=width_per_group, se_ratio=se_ratio, **choices
        )

    if variant == "cifar":
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNets have depth 6n+2 (20, 32, 44, 56, 110, 1202, ...); got {depth}.")
        n = (depth - 2) // 6
        stages: tuple[StageSpec, ...] = (
            StageSpec("basic", 16, n, 1),
            StageSpec("basic", 32, n, 2),
            StageSpec("basic", 64, n, 2),
        )
        return spec(stages, "zeropad", stem="cifar", stem_filters=16)

    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"Variant {variant!r} has no depth {depth}. Valid: {valid_depths_message()}.")
    block, repeats = IMAGENET_DEPTHS[depth]
    stages = tuple(
        StageSpec(block, filters, n, 1 if i == 0 else 2)
        for i, (filters, n) in enumerate(zip((64, 128, 256, 512), repeats))
    )
    if variant == "v2":
        # keras.applications ResNetV2: the stem's pool already halved, so stages 2-4
        # downsample in their *last* block and stage 5 not at all.
        stages = tuple(StageSpec(block, s.filters, s.repeats, 2 if i < 3 else 1) for i, s in enumerate(stages))
        return spec(stages, "projection", preact=True, stride_in_last_block=True)
    return spec(
        stages,
        "avgpool" if variant == "v1d" else "projection",
        stem="deep" if variant == "v1d" else "imagenet",
        stride_on="1x1" if variant == "v1" else "3x3",
    )
