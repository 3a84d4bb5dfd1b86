"""Data set presets: where each data set of the paper lives on the Hub, its columns, splits and image size."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASET_PRESETS", "DatasetPreset", "find_preset"]


@dataclass(frozen=True)
class DatasetPreset:
    """Where a data set lives on the Hub and how to split it.

    Split semantics (shared by every preset and by :func:`load_image_dataset`):

    * ``train_split`` feeds ``train``.
    * ``eval_split`` feeds ``validation`` (used for evaluation during training and model selection). When it is
      ``None`` (the data set has no labelled validation split), ``validation_fraction`` of ``train_split`` is
      carved out, stratified by label, with ``validation_seed``; ``train`` keeps the rest.
    * ``test_split`` feeds ``test``: the split the paper reports accuracy on. ImageNet reports on its
      ``validation`` split (its test split is unlabelled), so it has no ``test``.

    Attributes:
        name: Short name used with ``--dataset_name``.
        hub_id: Hub repository id, or ``None`` for the embedded data set (digits).
        config_name: Hub config (subset) name, e.g. ``"cropped_digits"`` for SVHN.
        image_column: Image column in the Hub data set.
        label_column: Label column in the Hub data set.
        train_split: Split to train on.
        eval_split: Labelled held-out split used as ``validation``; ``None`` to carve one out of train.
        test_split: Split reported on (becomes ``test``); ``None`` when there is none.
        validation_fraction: Fraction of train carved out as ``validation`` when ``eval_split`` is ``None``.
        validation_seed: Seed of that carve-out (fixed so that runs share one validation set).
        num_labels: Number of classes.
        image_size: Resolution (pixels, square) of the paper's from-scratch co-training on this data set: 224 for
            ImageNet and large-image data sets, the native size for small ones (CIFAR is not rescaled; the paper
            uses patch 4 with stride 2 instead, Section 5.3 / appendix A).
        transfer_image_size: Resolution for transfer (appendix C: every data set is resized to 224x224).
        description: One line for logs and docs.
        class_names: Label names (index = label value) given to the data whatever its source, so that models
            trained on the local files and on the Hub copy name their classes alike (the Hub's Fashion-MNIST says
            "T - shirt / top"). ``None``: the source's names.
        idx_env_var: Environment variable naming a folder of the data set's IDX files; when set, that folder is
            used and nothing else is tried.
        idx_dirs: Folders searched, in order, for the IDX files before the Hub (``~`` expanded; relative ones from
            the current directory); a folder counts when it (or its ``raw/``) holds them.
        install_hint: How to get the files offline, for the error when none of the above has them.
    """

    name: str
    hub_id: str | None
    config_name: str | None
    image_column: str
    label_column: str
    train_split: str
    eval_split: str | None
    test_split: str | None
    validation_fraction: float
    validation_seed: int
    num_labels: int
    image_size: int
    transfer_image_size: int = 224
    description: str = ""
    class_names: tuple[str, ...] | None = None
    idx_env_var: str | None = None
    idx_dirs: tuple[str, ...] = ()
    install_hint: str = ""

    @property
    def idx_files(self) -> bool:
        """Whether the data set can be read from local IDX files (MNIST-like) before the Hub."""
        return self.idx_env_var is not None or bool(self.idx_dirs)


DATASET_PRESETS: dict[str, DatasetPreset] = {
    preset.name: preset
    for preset in (
        DatasetPreset(
            name="imagenet-1k", hub_id="ILSVRC/imagenet-1k", config_name=None, image_column="image",
            label_column="label", train_split="train", eval_split="validation", test_split=None,
            validation_fraction=0.0, validation_seed=0, num_labels=1000, image_size=224,
            description="ImageNet-1k (gated on the Hub: accept its terms, then `hf auth login`); the paper's main "
            "benchmark, reported on the 50k validation images.",
        ),
        DatasetPreset(
            name="cifar10", hub_id="uoft-cs/cifar10", config_name=None, image_column="img", label_column="label",
            train_split="train", eval_split=None, test_split="test", validation_fraction=0.02, validation_seed=0,
            num_labels=10, image_size=32, description="CIFAR-10 (32x32; Table 5, Table 6).",
        ),
        DatasetPreset(
            name="cifar100", hub_id="uoft-cs/cifar100", config_name=None, image_column="img",
            label_column="fine_label", train_split="train", eval_split=None, test_split="test",
            validation_fraction=0.02, validation_seed=0, num_labels=100, image_size=32,
            description="CIFAR-100, fine labels (32x32; Table 5, Table 6).",
        ),
        DatasetPreset(
            name="sun397", hub_id="tanganke/sun397", config_name=None, image_column="image", label_column="label",
            train_split="train", eval_split=None, test_split="test", validation_fraction=0.1, validation_seed=0,
            num_labels=397, image_size=224,
            description="SUN-397 scene recognition (Table 5, Table 6): tanganke/sun397, the 50-images-per-class "
            "train/test split, not the whole data set (dpdl-benchmark/sun397 has a larger train/validation/test "
            "split).",
        ),
        DatasetPreset(
            name="resisc45", hub_id="timm/resisc45", config_name=None, image_column="image", label_column="label",
            train_split="train", eval_split="validation", test_split="test", validation_fraction=0.0,
            validation_seed=0, num_labels=45, image_size=224,
            description="RESISC-45 remote sensing (256x256; Table 5, Table 6).",
        ),
        DatasetPreset(
            name="dmlab", hub_id="dpdl-benchmark/dmlab", config_name=None, image_column="image",
            label_column="label", train_split="train", eval_split="validation", test_split="test",
            validation_fraction=0.0, validation_seed=0, num_labels=6, image_size=224,
            description="DMLab (VTAB; 6 distance classes; Table 5, Table 6).",
        ),
        DatasetPreset(
            name="mnist", hub_id="ylecun/mnist", config_name=None, image_column="image", label_column="label",
            train_split="train", eval_split=None, test_split="test", validation_fraction=0.02, validation_seed=0,
            num_labels=10, image_size=28,
            description="MNIST (28x28 grayscale; Table 5): the IDX files from $HF_ADVSOUP_MNIST_DIR, ./data/mnist "
            "or torchvision's ./data/MNIST/raw, else the Hub.",
            class_names=tuple(str(i) for i in range(10)), idx_env_var="HF_ADVSOUP_MNIST_DIR",
            idx_dirs=("data/mnist", "data/MNIST/raw"),
            install_hint="Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz in a folder and set HF_ADVSOUP_MNIST_DIR to it (or pass the folder as "
            "--dataset_name).",
        ),
        DatasetPreset(
            name="fashion_mnist", hub_id="zalando-datasets/fashion_mnist", config_name=None, image_column="image",
            label_column="label", train_split="train", eval_split=None, test_split="test", validation_fraction=0.1,
            validation_seed=0, num_labels=10, image_size=28,
            description="Fashion-MNIST (Zalando; 28x28 grayscale, 10 clothing classes; 60k train, 10k test): the IDX "
            "files from $HF_ADVSOUP_FASHION_MNIST_DIR, ./data/fashion-mnist, torchvision's ./data/FashionMNIST/raw "
            "or the Debian/Ubuntu package dataset-fashion-mnist, else the Hub. Validation: 6,000 training images, "
            "stratified (tune on it; report on test).",
            class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"),
            idx_env_var="HF_ADVSOUP_FASHION_MNIST_DIR",
            idx_dirs=("data/fashion-mnist", "data/FashionMNIST/raw", "/usr/share/datasets/fashion-mnist"),
            install_hint="Install the files offline with `apt-get update && apt-get install -y dataset-fashion-mnist` "
            "(Debian/Ubuntu: /usr/share/datasets/fashion-mnist/), or put Zalando's four .gz files in a folder and set "
            "HF_ADVSOUP_FASHION_MNIST_DIR to it.",
        ),
        DatasetPreset(
            name="svhn", hub_id="ufldl-stanford/svhn", config_name="cropped_digits", image_column="image",
            label_column="label", train_split="train", eval_split=None, test_split="test",
            validation_fraction=0.02, validation_seed=0, num_labels=10, image_size=32,
            description="SVHN cropped digits (32x32; Table 5); the `extra` split is not used.",
        ),
        DatasetPreset(
            name="digits", hub_id=None, config_name=None, image_column="image", label_column="label",
            train_split="train", eval_split="validation", test_split=None, validation_fraction=0.2,
            validation_seed=0, num_labels=10, image_size=16,
            description="scikit-learn's bundled 8x8 digits (1,797 images), embedded: works offline; the default. "
            "Not in the paper; 16x16 keeps a tiny ViT (patch 4, stride 2) fast on a CPU.",
        ),
    )
}


def find_preset(name: str) -> DatasetPreset | None:
    """The preset for a preset name or a preset's Hub id (case-insensitive), else ``None``."""
    if name in DATASET_PRESETS:
        return DATASET_PRESETS[name]
    for preset in DATASET_PRESETS.values():  # a Hub id of a preset gets the preset's columns and splits
        if preset.hub_id is not None and preset.hub_id.lower() == name.lower():
            return preset
    return None
