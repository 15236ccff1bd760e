"""Named models and published weights, as data.

A model name (timm's and torchvision's names) resolves to `build()` arguments; a weight
record, named `<model>.<tag>` as timm names them, says where a file lies, how to check it,
how to preprocess its inputs and what its publisher reports for it.

Sources of the numbers below (read, never downloaded):
- torchvision 0.29 `torchvision.models.*_Weights` enums: URL, `_metrics` ImageNet-1K acc@1,
  eval transforms (resize 256 or 232, crop 224, bilinear); V2 weights train at 176
  (the recipe's `--train-crop-size 176`). File names end in the first hex digits of the
  file's SHA-256, which torchvision's `check_hash` verifies; so do we.
- timm (huggingface/pytorch-image-models, `timm/models/resnet.py` default_cfgs):
  training size (`input_size`), eval size and crop (`test_input_size`/`test_crop_pct`
  where given), interpolation, license; top-1 from `results/results-imagenet.csv` at that
  eval size. timm's files are safetensors on the Hugging Face hub, whose SHA-256 is not
  published in either source: those records carry no hash and load as unverified.
- akamaster/pytorch_resnet_cifar10 (BSD-2-Clause): the CIFAR-10 ResNet-20...1202 of He et
  al. 2016 (option A), `.th` files named with the first 8 hex digits of their SHA-256
  (torch.hub's `check_hash` convention); inputs are pixels / 255 normalized with
  ImageNet's mean and std; top-1 = 100 - the test error its README reports.
- keras.applications (keras/src/applications/resnet.py): URLs and MD5s; top-1 from the
  table at keras.io/api/applications. Keras states no eval crop: 0.875 (resize 256,
  crop 224) is the protocol of the Caffe models the v1 files were ported from. The
  license is the one Keras states (MIT, ResNet-50 v1, ported from Kaiming He's release);
  for the other files Keras states none.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from keras_resnet import specs
from keras_resnet.files import dumps
from keras_resnet.layers import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A named architecture: the `build()` arguments it stands for."""

    name: str
    depth: int
    variant: str
    groups: int = 1
    width_per_group: int = 64
    se_ratio: float | None = None

    @property
    def build_kwargs(self) -> dict:
        return dict(
            depth=self.depth,
            variant=self.variant,
            groups=self.groups,
            width_per_group=self.width_per_group,
            se_ratio=self.se_ratio,
        )


@dataclasses.dataclass(frozen=True)
class WeightRecord:
    """One published weight file.

    `file_format` is "pth", "safetensors" or "keras_h5". `file_hash` is an MD5 (32 hex
    digits), a SHA-256 (64) or a SHA-256 prefix (the digits torchvision and timm put in
    their file names), or None where no hash is published.
    `preprocessing` is a `keras_resnet.preprocess_input` mode; `crop_pct` is the eval
    center-crop fraction (resize to eval_size / crop_pct, crop eval_size); `interpolation`
    the resize the publisher's top-1 was measured with; `top1` is the top-1 (%) on `dataset`
    the publisher reports at `eval_size`. `class_names`: the classes of the classifier, where
    the record knows them (ImageNet's 1,000 are not repeated here).
    """

    name: str
    url: str
    file_hash: str | None
    file_format: str
    source: str
    top1: float
    top1_source: str
    license: str
    preprocessing: str = "torch"
    train_size: int = 224
    eval_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    notop_url: str | None = None  # keras.applications: a second file without the classifier
    notop_hash: str | None = None
    num_classes: int = 1000
    dataset: str = "ImageNet-1K"
    class_names: tuple[str, ...] = ()

    @property
    def needs_torch(self) -> bool:
        """Whether reading the file needs PyTorch (a torch.save file; safetensors and HDF5 do not)."""
        return self.file_format == "pth"

    @property
    def model(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean (RGB, pixels in [0, 1]) subtracted by `preprocessing`."""
        return {
            "torch": IMAGENET_MEAN,
            "tf": (0.5, 0.5, 0.5),
            "caffe": tuple(m / 255 for m in reversed(CAFFE_BGR_MEAN)),
        }[self.preprocessing]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel divisor (pixels in [0, 1]); "caffe" also flips RGB to BGR."""
        return {"torch": IMAGENET_STD, "tf": (0.5, 0.5, 0.5), "caffe": (1 / 255,) * 3}[self.preprocessing]

    def file(self, include_top: bool) -> tuple[str, str | None]:
        """(url, hash) of the file to fetch."""
        if include_top or self.notop_url is None:
            return self.url, self.file_hash
        return self.notop_url, self.notop_hash

    def file_name(self, include_top: bool) -> str:
        """The name in the cache and under a `KERAS_RESNET_WEIGHTS_URL` mirror."""
        url, _ = self.file(include_top)
        return f"{self.name}.safetensors" if url.endswith("/model.safetensors") else url.rsplit("/", 1)[-1]

    @property
    def safetensors_url(self) -> str:
        """timm's safetensors copy on the Hugging Face hub (no published hash)."""
        return f"https://huggingface.co/timm/{self.name}/resolve/main/model.safetensors"


MODELS: dict[str, ModelEntry] = {
    m.name: m
    for m in (
        *(ModelEntry(f"resnet{d}", d, "v1.5") for d in specs.IMAGENET_DEPTHS),
        *(ModelEntry(f"resnet{d}d", d, "v1d") for d in specs.IMAGENET_DEPTHS),
        ModelEntry("resnext50_32x4d", 50, "v1.5", groups=32, width_per_group=4),
        ModelEntry("resnext101_32x8d", 101, "v1.5", groups=32, width_per_group=8),
        ModelEntry("resnext101_64x4d", 101, "v1.5", groups=64, width_per_group=4),
        ModelEntry("wide_resnet50_2", 50, "v1.5", width_per_group=128),
        ModelEntry("wide_resnet101_2", 101, "v1.5", width_per_group=128),
        # Bottleneck depths only: timm rounds the SE width up to a multiple of 8, which equals
        # channels/16 for every bottleneck stage (256..2048 channels) but not for basic blocks.
        *(ModelEntry(f"seresnet{d}", d, "v1.5", se_ratio=1 / 16) for d in (50, 101, 152)),
        ModelEntry("seresnet152d", 152, "v1d", se_ratio=1 / 16),
        *(ModelEntry(f"resnet{d}_{v}", d, v) for d in (50, 101, 152) for v in ("v1", "v2")),
        *(ModelEntry(f"resnet{d}_cifar", d, "cifar") for d in specs.CIFAR_DEPTHS),
    )
}

_TV = "https://download.pytorch.org/models/"
_TIMM_RESULTS = "timm results/results-imagenet.csv"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_KERAS_TOP1 = "keras.io/api/applications (table)"


def _tv(name: str, file: str, top1: float, enum: str, v2: bool = False) -> WeightRecord:
    """A torchvision release: V1 evaluates at resize 256 / crop 224, V2 at 232 / 224."""
    return WeightRecord(
        name,
        _TV + file,
        file.rsplit("-", 1)[1].split(".")[0],
        "pth",
        "torchvision",
        top1,
        f"torchvision {enum} meta",
        "BSD-3-Clause",
        train_size=176 if v2 else 224,
        crop_pct=0.965 if v2 else 0.875,
    )


def _timm(name: str, top1: float, train: int = 224, eval_size: int = 288, crop: float = 1.0) -> WeightRecord:
    """A timm-trained release on the Hugging Face hub (bicubic; no published hash)."""
    return WeightRecord(
        name,
        f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors",
        None,
        "safetensors",
        "timm",
        top1,
        f"{_TIMM_RESULTS} at {eval_size}",
        "Apache-2.0",
        train_size=train,
        eval_size=eval_size,
        crop_pct=crop,
        interpolation="bicubic",
    )


def _keras(depth: int, v2: bool, top1: float, md5_top: str, md5_notop: str) -> WeightRecord:
    key = f"resnet{depth}{'v2' if v2 else ''}"
    file = f"{key}_weights_tf_dim_ordering_tf_kernels"
    return WeightRecord(
        f"resnet{depth}_{'v2' if v2 else 'v1'}.keras_in1k",
        f"{_KERAS}{file}.h5",
        md5_top,
        "keras_h5",
        "keras.applications",
        top1,
        _KERAS_TOP1,
        "MIT" if (depth, v2) == (50, False) else "not stated",
        preprocessing="tf" if v2 else "caffe",
        notop_url=f"{_KERAS}{file}_notop.h5",
        notop_hash=md5_notop,
    )


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


# The whole SHA-256 of the files we read from the repository's history (2026-12-06); the
# others are checked by the 8 digits of their names.
_AKAMASTER_SHA256 = {
    20: "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    32: "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
    44: "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
    56: "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
}


def _akamaster(depth: int, file: str, error: float) -> WeightRecord:
    """One of akamaster/pytorch_resnet_cifar10's CIFAR-10 ResNets (test error from its README)."""
    return WeightRecord(
        f"resnet{depth}_cifar.akamaster_cifar10",
        _AKAMASTER + file,
        _AKAMASTER_SHA256.get(depth) or file.rsplit("-", 1)[1].split(".")[0],
        "pth",
        "akamaster/pytorch_resnet_cifar10",
        round(100 - error, 2),
        f"akamaster/pytorch_resnet_cifar10 README (test error {error} %)",
        "BSD-2-Clause",
        train_size=32,
        eval_size=32,
        crop_pct=1.0,
        num_classes=10,
        dataset="CIFAR-10",
        class_names=CIFAR10_CLASSES,
    )


WEIGHTS: dict[str, WeightRecord] = {
    w.name: w
    for w in (
        _tv("resnet18.tv_in1k", "resnet18-f37072fd.pth", 69.758, "ResNet18_Weights.IMAGENET1K_V1"),
        _tv("resnet34.tv_in1k", "resnet34-b627a593.pth", 73.314, "ResNet34_Weights.IMAGENET1K_V1"),
        _tv("resnet50.tv_in1k", "resnet50-0676ba61.pth", 76.13, "ResNet50_Weights.IMAGENET1K_V1"),
        _tv("resnet50.tv2_in1k", "resnet50-11ad3fa6.pth", 80.858, "ResNet50_Weights.IMAGENET1K_V2", True),
        _tv("resnet101.tv_in1k", "resnet101-63fe2227.pth", 77.374, "ResNet101_Weights.IMAGENET1K_V1"),
        _tv("resnet101.tv2_in1k", "resnet101-cd907fc2.pth", 81.886, "ResNet101_Weights.IMAGENET1K_V2", True),
        _tv("resnet152.tv_in1k", "resnet152-394f9c45.pth", 78.312, "ResNet152_Weights.IMAGENET1K_V1"),
        _tv("resnet152.tv2_in1k", "resnet152-f82ba261.pth", 82.284, "ResNet152_Weights.IMAGENET1K_V2", True),
        _tv("resnext50_32x4d.tv_in1k", "resnext50_32x4d-7cdf4587.pth", 77.618, "ResNeXt50_32X4D_Weights.IMAGENET1K_V1"),
        _tv(
            "resnext50_32x4d.tv2_in1k",
            "resnext50_32x4d-1a0047aa.pth",
            81.198,
            "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
            True,
        ),
        _tv(
            "resnext101_32x8d.tv_in1k",
            "resnext101_32x8d-8ba56ff5.pth",
            79.312,
            "ResNeXt101_32X8D_Weights.IMAGENET1K_V1",
        ),
        _tv(
            "resnext101_32x8d.tv2_in1k",
            "resnext101_32x8d-110c445d.pth",
            82.834,
            "ResNeXt101_32X8D_Weights.IMAGENET1K_V2",
            True,
        ),
        # Trained with the V2 recipe (pytorch/vision#5935), though torchvision calls it V1.
        _tv(
            "resnext101_64x4d.tv_in1k",
            "resnext101_64x4d-173b62eb.pth",
            83.246,
            "ResNeXt101_64X4D_Weights.IMAGENET1K_V1",
            True,
        ),
        _tv("wide_resnet50_2.tv_in1k", "wide_resnet50_2-95faca4d.pth", 78.468, "Wide_ResNet50_2_Weights.IMAGENET1K_V1"),
        _tv(
            "wide_resnet50_2.tv2_in1k",
            "wide_resnet50_2-9ba9bcbe.pth",
            81.602,
            "Wide_ResNet50_2_Weights.IMAGENET1K_V2",
            True,
        ),
        _tv(
            "wide_resnet101_2.tv_in1k",
            "wide_resnet101_2-32ee1156.pth",
            78.848,
            "Wide_ResNet101_2_Weights.IMAGENET1K_V1",
        ),
        _tv(
            "wide_resnet101_2.tv2_in1k",
            "wide_resnet101_2-d733dc28.pth",
            82.51,
            "Wide_ResNet101_2_Weights.IMAGENET1K_V2",
            True,
        ),
        # timm, ResNet strikes back (a1, a1h: LAMB + BCE) and RandAugment recipes (ra2, racm).
        _timm("resnet18.a1_in1k", 73.164),
        _timm("resnet34.a1_in1k", 77.93),
        _timm("resnet50.a1_in1k", 81.24),
        _timm("resnet50.a1h_in1k", 80.654, train=176, eval_size=224),
        _timm("resnet101.a1h_in1k", 82.796),
        _timm("resnet152.a1h_in1k", 83.494),
        _timm("resnet18d.ra2_in1k", 73.79, crop=0.95),
        _timm("resnet34d.ra2_in1k", 78.44, crop=0.95),
        _timm("resnet50d.ra2_in1k", 81.354, crop=0.95),
        _timm("resnet50d.a1_in1k", 81.466),
        _timm("resnet101d.ra2_in1k", 83.02, train=256, eval_size=320),
        _timm("resnet152d.ra2_in1k", 83.684, train=256, eval_size=320),
        _timm("resnet200d.ra2_in1k", 83.976, train=256, eval_size=320),
        _timm("resnext50_32x4d.a1h_in1k", 82.016),
        _timm("resnext101_64x4d.c1_in1k", 83.158),
        _timm("wide_resnet50_2.racm_in1k", 82.26, crop=0.95),
        _timm("seresnet50.a1_in1k", 81.114),
        _timm("seresnet50.ra2_in1k", 81.288, crop=0.95),
        _timm("seresnet152d.ra2_in1k", 84.344, train=256, eval_size=320),
        _keras(50, False, 74.9, "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
        _keras(101, False, 76.4, "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
        _keras(152, False, 76.6, "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
        _keras(50, True, 76.0, "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
        _keras(101, True, 77.2, "6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
        _keras(152, True, 78.0, "a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
        _akamaster(20, "resnet20-12fca82f.th", 8.27),
        _akamaster(32, "resnet32-d509ac18.th", 7.37),
        _akamaster(44, "resnet44-014dd654.th", 6.90),
        _akamaster(56, "resnet56-4bfd9763.th", 6.61),
        _akamaster(110, "resnet110-1d1ed7c2.th", 6.32),
        _akamaster(1202, "resnet1202-f3b1deed.th", 6.18),
    )
}


def interpolation_for(weights: str | None) -> str:
    """The resize a weight record's top-1 was measured with; "bilinear" for anything else."""
    record = WEIGHTS.get(weights or "")
    return record.interpolation if record is not None else "bilinear"


def list_models(pattern: str = "*") -> list[str]:
    """Names `build()` accepts, e.g. "resnet50", "resnext50_32x4d", "resnet20_cifar"."""
    return sorted(fnmatch.filter(MODELS, pattern))


def list_weights(pattern: str = "*") -> list[str]:
    """Published weights, "<model>.<tag>" (a bare model name lists that model's tags)."""
    if pattern in MODELS:
        pattern += ".*"
    return sorted(fnmatch.filter(WEIGHTS, pattern))


def table(pattern: str = "*", fmt: str = "text") -> str:
    """The published weights matching `pattern` as a table: "text", "json" or "markdown"
    (markdown: the short table in docs/models.md: name, source, data, top-1, resolution, whether it
    needs PyTorch, license)."""
    records = [WEIGHTS[name] for name in list_weights(pattern)]
    if not records:
        raise ValueError(f"No weights match {pattern!r}; `keras-resnet weights` lists them all.")
    if fmt == "json":
        return dumps([dataclasses.asdict(r) for r in records], indent=2)
    header = ("weights", "source", "data", "top-1 %", "train / eval px", "eval crop", "hash", "needs", "license")
    rows = [
        (
            r.name,
            r.source,
            r.dataset,
            f"{r.top1:.2f}",
            f"{r.train_size} / {r.eval_size}",
            f"{r.crop_pct:g}",
            ("md5" if len(r.file_hash) == 32 else "sha256") if r.file_hash else "none",
            "PyTorch" if r.needs_torch else "-",
            r.license,
        )
        for r in records
    ]
    if fmt == "markdown":
        return "\n".join(
            [
                "| weights | source | data | top-1 % | train / eval px | needs | license |",
                "|---|---|---|---:|---:|---|---|",
            ]
            + [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[7]} | {r[8]} |" for r in rows]
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows))


def get_model(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Known: {', '.join(list_models())}.")
    return MODELS[name]


def get_weights(tag: str) -> WeightRecord:
    """The record of "<model>.<tag>"."""
    if tag not in WEIGHTS:
        model = tag.split(".", 1)[0]
        known = list_weights(model) if model in MODELS else list_weights()
        raise ValueError(
            f"Unknown weights {tag!r}. Known{' for ' + model if model in MODELS else ''}: "
            f"{', '.join(known) or 'none (this model has no published weights)'}."
        )
    return WEIGHTS[tag]
