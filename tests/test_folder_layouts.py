"""Tests for the layout rules of pipeline.data.folder: split names, split structure, wrapper
folders, split folders without classes, and explicit `layout` / `split_folders` control."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from pipeline.data import folder as folder_module
from pipeline.data.folder import (
    FolderScan,
    is_unlabelled_folder_name,
    scan_image_folder,
    split_of_folder_name,
)


def _scan(root: Path, **options) -> FolderScan:
    return scan_image_folder(root, show_progress=False, **options)


def _write(factory, relative_paths: list[str]) -> None:
    """Writes one distinct JPEG per relative path."""
    for seed, relative_path in enumerate(relative_paths, start=1):
        factory.jpeg(relative_path, seed=seed)


def _splits_by_path(scan: FolderScan) -> dict[str, tuple[str | None, str]]:
    """{relative path: (given split, class name)} of every item."""
    return {
        item.relative_path: (item.given_split, scan.class_names[item.label]) for item in scan.items
    }


@pytest.fixture
def no_image_reads(monkeypatch):
    """Fails the test if any image file is checked (layout errors must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image file was read before the layout was decided")

    monkeypatch.setattr(folder_module, "check_image_bytes", refuse)


# Split names


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train", "train"),
        ("training", "train"),
        ("training_set", "train"),
        ("train_set", "train"),
        ("trainset", "train"),
        ("trn", "train"),
        ("train_data", "train"),
        ("training_data", "train"),
        ("Train", "train"),
        ("TRAINING", "train"),
        ("seg_train", "train"),
        ("Data-Train", "train"),
        ("train_images", "train"),
        ("train.v2", "train"),
        ("train2017", "train"),
        ("trainval", "train"),
        ("train_val", "train"),
        ("VOC_trainval", "train"),
        ("val", "dev"),
        ("valid", "dev"),
        ("Validation", "dev"),
        ("dev", "dev"),
        ("val_set", "dev"),
        ("valset", "dev"),
        ("validation_set", "dev"),
        ("development", "dev"),
        ("val images", "dev"),
        ("val2017", "dev"),
        ("test", "test"),
        ("TEST", "test"),
        ("testing", "test"),
        ("test_set", "test"),
        ("testset", "test"),
        ("TEST SET", "test"),
        ("eval", "test"),
        ("evaluation", "test"),
        ("tst", "test"),
        ("test1", "test"),
        ("Test_2", "test"),
        ("seg_test", "test"),
        ("train_test", None),
        ("val-test", None),
        ("part1", None),
        ("cat", None),
        ("trains", None),
        ("contest", None),
        ("contest2", None),
        ("v2", None),
        ("pred", None),
        ("seg_pred", None),
        ("unlabeled", None),
        ("test_predictions", None),
        ("", None),
    ],
)
def test_split_of_folder_name(name, split):
    assert split_of_folder_name(name) == split


def test_split_names_are_compared_in_nfc():
    decomposed = unicodedata.normalize("NFD", "tést_train")
    assert split_of_folder_name(decomposed) == "train"


@pytest.mark.parametrize(
    ("name", "unlabelled"),
    [
        ("pred", True),
        ("seg_pred", True),
        ("Predict", True),
        ("prediction", True),
        ("unlabeled", True),
        ("Unlabelled_images", True),
        ("inference", True),
        ("train", False),
        ("predator", False),
    ],
)
def test_is_unlabelled_folder_name(name, unlabelled):
    assert is_unlabelled_folder_name(name) is unlabelled


# Split folders recognised by name


def test_train_and_val_folders(image_file_factory):
    _write(image_file_factory, ["train/cat/1.jpg", "train/dog/2.jpg", "val/cat/3.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.layout == "split_folders"
    assert scan.class_names == ("cat", "dog")
    assert scan.given_splits == ("train", "dev")
    assert scan.split_folder_names == {"train": "train", "dev": "val"}
    assert scan.root_used == scan.root == image_file_factory.root
    assert (
        scan.layout_description
        == "Split folders found: train -> train, val -> dev (no test folder)."
    )
    assert _splits_by_path(scan) == {
        "train/cat/1.jpg": ("train", "cat"),
        "train/dog/2.jpg": ("train", "dog"),
        "val/cat/3.jpg": ("dev", "cat"),
    }
    assert not any("folder" in warning.lower() for warning in scan.warnings)


def test_training_set_and_test_set_are_splits_not_classes(image_file_factory):
    _write(
        image_file_factory,
        [
            "training_set/cats/1.jpg",
            "training_set/dogs/2.jpg",
            "training_set/dogs/3.jpg",
            "test_set/cats/4.jpg",  # no dogs in test: a class missing from a split is fine
        ],
    )
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("cats", "dogs")
    assert scan.given_splits == ("train", "test")
    assert scan.split_folder_names == {"train": "training_set", "test": "test_set"}
    assert scan.layout_description == (
        "Split folders found: training_set -> train, test_set -> test (no dev folder)."
    )
    assert [item.given_split for item in scan.items] == ["test", "train", "train", "train"]


def test_intel_layout_unwraps_split_folders_and_skips_pred(image_file_factory):
    _write(
        image_file_factory,
        [
            "seg_train/seg_train/buildings/1.jpg",
            "seg_train/seg_train/forest/2.jpg",
            "seg_test/seg_test/buildings/3.jpg",
            "seg_test/seg_test/forest/4.jpg",
            "seg_pred/seg_pred/5.jpg",
            "seg_pred/seg_pred/6.jpg",
        ],
    )
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("buildings", "forest")
    assert scan.given_splits == ("train", "test")
    assert scan.split_folder_names == {
        "train": "seg_train/seg_train",
        "test": "seg_test/seg_test",
    }
    assert _splits_by_path(scan) == {
        "seg_test/seg_test/buildings/3.jpg": ("test", "buildings"),
        "seg_test/seg_test/forest/4.jpg": ("test", "forest"),
        "seg_train/seg_train/buildings/1.jpg": ("train", "buildings"),
        "seg_train/seg_train/forest/2.jpg": ("train", "forest"),
    }
    assert [(entry.path.name, entry.kind) for entry in scan.skipped] == [("seg_pred", "ignored")]
    assert "no labels" in scan.skipped[0].reason
    assert len(scan.warnings) == 1
    assert "'seg_pred'" in scan.warnings[0] and "no labels" in scan.warnings[0]


def test_split_names_in_any_case(image_file_factory):
    _write(
        image_file_factory,
        ["Train/cat/1.jpg", "Train/dog/2.jpg", "Validation/dog/3.jpg", "TEST/cat/4.jpg"],
    )
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("cat", "dog")
    assert scan.given_splits == ("train", "dev", "test")
    assert scan.split_folder_names == {"train": "Train", "dev": "Validation", "test": "TEST"}
    assert sorted(item.given_split for item in scan.items) == ["dev", "test", "train", "train"]


def test_trainval_folder_is_the_train_split(image_file_factory):
    _write(image_file_factory, ["trainval/cat/1.jpg", "trainval/dog/2.jpg", "test/cat/3.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.given_splits == ("train", "test")
    assert scan.split_folder_names == {"train": "trainval", "test": "test"}


def test_a_lone_train_folder_is_a_split_not_a_wrapper(image_file_factory):
    _write(image_file_factory, ["train/cat/1.jpg", "train/dog/2.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.layout == "split_folders"
    assert scan.given_splits == ("train",)
    assert scan.class_names == ("cat", "dog")


def test_two_folders_named_like_one_split_are_refused(image_file_factory, no_image_reads):
    _write(
        image_file_factory,
        ["train/cat/1.jpg", "train/dog/2.jpg", "training/cat/3.jpg", "test/dog/4.jpg"],
    )
    with pytest.raises(
        ValueError,
        match=r"'train' and 'training' in .* both named like the train split.*"
        r"data\.split_folders\.train=train data\.split_folders\.test=test",
    ):
        _scan(image_file_factory.root)


def test_split_named_folders_of_loose_images_are_refused(image_file_factory, no_image_reads):
    _write(image_file_factory, ["train/1.jpg", "train/2.jpg", "test/3.jpg"])
    with pytest.raises(ValueError, match=r"folders test, train in .* named like splits") as error:
        _scan(image_file_factory.root)
    assert "the train folder 'train' holds no class folders" in str(error.value)
    assert "data.layout=class_folders" in str(error.value)


def test_split_named_folders_of_loose_images_as_classes(image_file_factory):
    _write(image_file_factory, ["train/1.jpg", "train/2.jpg", "test/3.jpg"])
    scan = _scan(image_file_factory.root, layout="class_folders")
    assert scan.class_names == ("test", "train")
    assert not any("named like a" in warning for warning in scan.warnings)  # as asked


def test_kaggle_dogs_vs_cats_labels_in_file_names_are_refused(image_file_factory,
                                                              no_image_reads):
    # train/cat.0.jpg ... and test1/1.jpg: "test1" is the test split, not a class
    _write(image_file_factory, ["train/cat.0.jpg", "train/dog.0.jpg", "test1/1.jpg"])
    with pytest.raises(ValueError, match=r"folders test1, train in .* named like splits") as error:
        _scan(image_file_factory.root)
    assert "no image has a label" in str(error.value)


def test_coco_style_numbered_split_folders(image_file_factory):
    _write(image_file_factory, ["train2017/cat/1.jpg", "train2017/dog/2.jpg",
                                "val2017/cat/3.jpg", "val2017/dog/4.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.layout == "split_folders"
    assert scan.split_folder_names == {"train": "train2017", "dev": "val2017"}


def test_a_class_folder_named_like_a_split_is_kept_with_a_warning(image_file_factory):
    # CIFAR-100 has a class "train"; a folder of unsorted training images looks the same
    _write(image_file_factory, ["bus/1.jpg", "train/2.jpg", "tractor/3.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("bus", "tractor", "train")
    [warning] = [warning for warning in scan.warnings if "named like a" in warning]
    assert "'train' is named like a train split folder" in warning
    assert "data.split_folders" in warning


def test_a_labels_file_beside_unsorted_images_is_named_in_the_error(image_file_factory):
    _write(image_file_factory, ["images/1.jpg", "images/2.jpg"])
    image_file_factory.write_bytes("labels.csv", b"1.jpg,cat\n2.jpg,dog\n")
    with pytest.raises(ValueError, match=r"1 usable class\(es\) \('images'\)") as error:
        _scan(image_file_factory.root)
    assert "never from a file like 'labels.csv'" in str(error.value)


# Wrapper folders


def test_food101_image_folder_beside_its_metadata_is_used(image_file_factory):
    # food-101/{images/<class>/*.jpg, meta/{train,test}.txt, README.txt}
    _write(image_file_factory, ["food-101/images/apple_pie/1.jpg",
                                "food-101/images/apple_pie/2.jpg", "food-101/images/ramen/3.jpg"])
    image_file_factory.text("food-101/meta/train.txt")
    image_file_factory.text("food-101/README.txt")
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("apple_pie", "ramen")
    assert scan.root_used == image_file_factory.root / "food-101" / "images"
    reasons = {entry.path.name: entry.reason for entry in scan.skipped}
    assert "holds no images, beside the image folder 'images'" in reasons["meta"]


def test_an_empty_class_folder_is_no_metadata(image_file_factory):
    # cat/ holds sub-folders of images, dog/ is still empty: not a wrapper around cat/
    _write(image_file_factory, ["cat/indoor/1.jpg", "cat/outdoor/2.jpg"])
    (image_file_factory.root / "dog").mkdir()
    with pytest.raises(ValueError, match=r"1 usable class\(es\) \('cat'\)"):
        _scan(image_file_factory.root)


def test_wrapper_folders_are_unwrapped(image_file_factory):
    factory = image_file_factory
    _write(
        factory,
        [
            "archive/dataset/train/cat/1.jpg",
            "archive/dataset/train/dog/2.jpg",
            "archive/dataset/test/cat/3.jpg",
            "archive/dataset/test/dog/4.jpg",
        ],
    )
    factory.apple_double("archive/__MACOSX/dataset/._x.jpg")
    factory.text("archive/dataset/README.md")
    scan = _scan(factory.root)
    assert scan.root == factory.root
    assert scan.root_used == factory.root / "archive" / "dataset"
    assert scan.given_splits == ("train", "test")
    assert scan.split_folder_names == {
        "train": "archive/dataset/train",
        "test": "archive/dataset/test",
    }
    assert _splits_by_path(scan) == {
        "archive/dataset/test/cat/3.jpg": ("test", "cat"),
        "archive/dataset/test/dog/4.jpg": ("test", "dog"),
        "archive/dataset/train/cat/1.jpg": ("train", "cat"),
        "archive/dataset/train/dog/2.jpg": ("train", "dog"),
    }
    skipped = {entry.path.name: entry.kind for entry in scan.skipped}
    assert skipped == {"__MACOSX": "hidden", "README.md": "ignored"}


def test_a_wrapped_class_folder_layout(image_file_factory):
    _write(image_file_factory, ["download/photos/cat/1.jpg", "download/photos/dog/2.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.layout == "class_folders"
    assert scan.root_used == image_file_factory.root / "download" / "photos"
    assert scan.class_names == ("cat", "dog")
    assert [item.relative_path for item in scan.items] == [
        "download/photos/cat/1.jpg",
        "download/photos/dog/2.jpg",
    ]
    assert scan.given_splits == () and scan.split_folder_names == {}
    assert scan.layout_description.startswith("Class folders found in download/photos")


def test_plain_class_folders_describe_the_layout(image_file_factory):
    _write(image_file_factory, ["cat/1.jpg", "dog/2.jpg", "bird/3.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.root_used == image_file_factory.root
    assert scan.layout_description == "Class folders found: 3 folders, one per class."


# Split folders without class folders


def test_split_folder_of_loose_images_gives_no_split(image_file_factory):
    _write(
        image_file_factory,
        ["train/cat/1.jpg", "train/dog/2.jpg", "test/3.jpg", "test/4.jpg", "test/5.jpg"],
    )
    scan = _scan(image_file_factory.root)
    assert scan.given_splits == ("train",)
    assert scan.split_folder_names == {"train": "train"}
    assert scan.class_names == ("cat", "dog")
    assert len(scan.items) == 2
    ignored = sorted(entry.path.name for entry in scan.skipped if entry.kind == "ignored")
    assert ignored == ["3.jpg", "4.jpg", "5.jpg"]
    assert all("no label" in entry.reason for entry in scan.skipped)
    assert scan.warnings[0].startswith(
        "Split folder 'test' holds no class folders (3 file(s) directly"
    )
    assert "(no dev or test folder)" in scan.layout_description


# Split folders recognised by structure


def _parts(factory) -> None:
    _write(factory, ["part1/cat/1.jpg", "part1/dog/2.jpg", "part2/cat/3.jpg", "part2/dog/4.jpg"])


def test_same_class_folders_without_split_names_are_refused(image_file_factory, no_image_reads):
    _parts(image_file_factory)
    with pytest.raises(ValueError) as error:
        _scan(image_file_factory.root)
    message = str(error.value)
    assert "the folders part1, part2 all hold the same sub-folders (cat, dog)" in message
    assert "data.split_folders.train=part1 data.split_folders.test=part2" in message
    assert "data.layout=class_folders" in message


def test_split_folders_name_the_splits(image_file_factory):
    _parts(image_file_factory)
    scan = _scan(image_file_factory.root, split_folders={"train": "part1", "test": "part2"})
    assert scan.layout == "split_folders"
    assert scan.class_names == ("cat", "dog")
    assert scan.given_splits == ("train", "test")
    assert scan.split_folder_names == {"train": "part1", "test": "part2"}
    assert scan.layout_description == (
        "Split folders given by data.split_folders: part1 -> train, part2 -> test (no dev folder)."
    )
    assert _splits_by_path(scan) == {
        "part1/cat/1.jpg": ("train", "cat"),
        "part1/dog/2.jpg": ("train", "dog"),
        "part2/cat/3.jpg": ("test", "cat"),
        "part2/dog/4.jpg": ("test", "dog"),
    }


def test_class_folders_layout_never_looks_for_splits(image_file_factory):
    _parts(image_file_factory)
    scan = _scan(image_file_factory.root, layout="class_folders")
    assert scan.layout == "class_folders"
    assert scan.class_names == ("part1", "part2")
    assert scan.given_splits == ()
    assert [item.label for item in scan.items] == [0, 0, 1, 1]


def test_classes_with_the_same_sub_folders_are_refused(image_file_factory, no_image_reads):
    _write(
        image_file_factory,
        ["cat/indoor/1.jpg", "cat/outdoor/2.jpg", "dog/indoor/3.jpg", "dog/outdoor/4.jpg"],
    )
    with pytest.raises(
        ValueError, match=r"same sub-folders \(indoor, outdoor\).*data\.layout=class_folders"
    ):
        _scan(image_file_factory.root)


def test_classes_with_the_same_sub_folders_as_class_folders(image_file_factory):
    _write(
        image_file_factory,
        ["cat/indoor/1.jpg", "cat/outdoor/2.jpg", "dog/indoor/3.jpg", "dog/outdoor/4.jpg"],
    )
    scan = _scan(image_file_factory.root, layout="class_folders")
    assert scan.class_names == ("cat", "dog")
    assert [item.label for item in scan.items] == [0, 0, 1, 1]


def test_sub_folder_names_are_compared_ignoring_case(image_file_factory, no_image_reads):
    _write(image_file_factory, ["a/Cat/1.jpg", "a/dog/2.jpg", "b/cat/3.jpg", "b/DOG/4.jpg"])
    with pytest.raises(
        ValueError, match=r"data\.split_folders\.train=a data\.split_folders\.test=b"
    ):
        _scan(image_file_factory.root)


def test_suggestion_keeps_a_recognised_train_folder(image_file_factory, no_image_reads):
    _write(image_file_factory, ["holdout/cat/1.jpg", "holdout/dog/2.jpg", "train/cat/3.jpg"])
    image_file_factory.jpeg("train/dog/4.jpg", seed=4)
    with pytest.raises(
        ValueError, match=r"data\.split_folders\.train=train data\.split_folders\.test=holdout"
    ):
        _scan(image_file_factory.root)


def test_different_class_folders_without_split_names_are_classes(image_file_factory):
    _write(image_file_factory, ["cat/a/1.jpg", "cat/b/2.jpg", "dog/c/3.jpg", "dog/d/4.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.layout == "class_folders"
    assert scan.class_names == ("cat", "dog")


# Explicit split_folders and layout


def test_split_folders_skip_other_folders_and_allow_nesting(image_file_factory):
    _write(
        image_file_factory,
        [
            "data/first/cat/1.jpg",
            "data/first/dog/2.jpg",
            "data/second/cat/3.jpg",
            "extra/cat/4.jpg",
        ],
    )
    scan = _scan(
        image_file_factory.root, split_folders={"train": "data/first", "dev": "data/second"}
    )
    assert scan.given_splits == ("train", "dev")
    assert scan.split_folder_names == {"train": "data/first", "dev": "data/second"}
    assert sorted(_splits_by_path(scan)) == [
        "data/first/cat/1.jpg",
        "data/first/dog/2.jpg",
        "data/second/cat/3.jpg",
    ]
    assert [(entry.path.name, entry.kind) for entry in scan.skipped] == [("extra", "ignored")]
    assert scan.warnings[0] == "Folders not named in data.split_folders were skipped: extra."


@pytest.mark.parametrize(
    ("split_folders", "message"),
    [
        ({"train": "part1", "val": "part2"}, r"Unknown split 'val'.*Did you mean 'dev'\?"),
        ({"test": "part2"}, r"names no train folder"),
        ({"train": "part1", "test": "part3"}, r"'part3' .* not a folder.*part1, part2"),
        ({"train": "part1", "test": "part1"}, r"must be distinct"),
        ({"train": "../elsewhere"}, r"must be a folder path relative to"),
    ],
)
def test_bad_split_folders_are_refused(image_file_factory, split_folders, message):
    _parts(image_file_factory)
    with pytest.raises(ValueError, match=message) as error:
        _scan(image_file_factory.root, split_folders=split_folders)
    assert "Received: split_folders=" in str(error.value)


def test_split_folders_conflict_with_the_class_folders_layout(image_file_factory):
    _parts(image_file_factory)
    with pytest.raises(ValueError, match=r"layout='class_folders' never uses split folders"):
        _scan(image_file_factory.root, layout="class_folders", split_folders={"train": "part1"})


def test_empty_split_folders_mean_detect(image_file_factory):
    _write(image_file_factory, ["train/cat/1.jpg", "train/dog/2.jpg"])
    assert _scan(image_file_factory.root, split_folders={}).given_splits == ("train",)


def test_split_folders_layout_insists_on_splits(image_file_factory, no_image_reads):
    _write(image_file_factory, ["cat/1.jpg", "dog/2.jpg"])
    with pytest.raises(ValueError, match=r"No split folders found.*Top-level folders: cat, dog"):
        _scan(image_file_factory.root, layout="split_folders")


def test_unknown_layout_is_refused(image_file_factory):
    _write(image_file_factory, ["cat/1.jpg", "dog/2.jpg"])
    with pytest.raises(ValueError, match=r"Expected one of: auto, class_folders, split_folders"):
        _scan(image_file_factory.root, layout="splits")


def test_kaggle_chest_xray_with_its_nested_copy(image_file_factory):
    factory = image_file_factory
    paths = [
        f"{prefix}{split}/{name}/{index}.jpg"
        for prefix in ("chest_xray/", "chest_xray/chest_xray/")
        for split in ("train", "val", "test")
        for name in ("NORMAL", "PNEUMONIA")
        for index in (1, 2)
    ]
    _write(factory, paths)
    factory.apple_double("chest_xray/__MACOSX/chest_xray/._1.jpg")
    scan = _scan(factory.root)
    assert scan.root_used == factory.root / "chest_xray"
    assert scan.class_names == ("NORMAL", "PNEUMONIA")
    assert scan.given_splits == ("train", "dev", "test")
    assert scan.split_folder_names == {
        "train": "chest_xray/train",
        "dev": "chest_xray/val",
        "test": "chest_xray/test",
    }
    assert len(scan.items) == 12
    assert not any(item.relative_path.startswith("chest_xray/chest_xray/") for item in scan.items)
    assert [(entry.path.name, entry.kind) for entry in scan.skipped] == [
        ("__MACOSX", "hidden"),
        ("chest_xray", "ignored"),
    ]
    assert scan.warnings[0].startswith(
        "Folder 'chest_xray/chest_xray' holds split folders of its own"
    )


def test_two_folders_holding_split_folders_are_ambiguous(image_file_factory, no_image_reads):
    _write(image_file_factory, ["a/train/x/1.jpg", "a/test/x/2.jpg", "b/train/x/3.jpg"])
    image_file_factory.jpeg("b/test/x/4.jpg", seed=4)
    with pytest.raises(ValueError, match=r"folders a, b all hold the same sub-folders"):
        _scan(image_file_factory.root)


# Layouts of popular downloads whose folders are not classes (probed from their real trees)


def test_oxford_pets_images_beside_annotations_are_refused(image_file_factory, no_image_reads):
    # images/Abyssinian_1.jpg ... and annotations/trimaps/Abyssinian_1.png: labels in names
    _write(image_file_factory, ["images/Abyssinian_1.jpg", "images/beagle_1.jpg",
                                "annotations/trimaps/Abyssinian_1.png"])
    image_file_factory.text("annotations/list.txt")
    with pytest.raises(ValueError, match="not one folder per class") as error:
        _scan(image_file_factory.root)
    message = str(error.value)
    assert "a folder named 'images' holds the images of every class, beside annotations" in message
    assert "data.layout=class_folders" in message and "No image was read" in message


def test_an_image_set_folder_name_is_a_class_when_asked(image_file_factory):
    _write(image_file_factory, ["images/1.jpg", "annotations/2.jpg"])
    scan = _scan(image_file_factory.root, layout="class_folders")
    assert scan.class_names == ("annotations", "images")


@pytest.mark.parametrize("names", [
    ("HAM10000_images_part_1", "HAM10000_images_part_2"),  # with HAM10000_metadata.csv
    ("images_001", "images_002"),  # NIH ChestX-ray14, labels in Data_Entry_2017.csv
    ("part1", "part2", "part3"),
])
def test_numbered_parts_of_one_image_set_are_refused(image_file_factory, no_image_reads, names):
    _write(image_file_factory, [f"{name}/{index}.jpg" for index, name in enumerate(names)])
    image_file_factory.text("metadata.csv")
    with pytest.raises(ValueError, match="differ only by a number, like parts of one image set"
                       ) as error:
        _scan(image_file_factory.root)
    assert "never from a file like 'metadata.csv'" in str(error.value)


def test_numbered_part_folders_without_a_label_file_are_refused_by_their_name(
        image_file_factory, no_image_reads):
    _write(image_file_factory, ["batch_1/1.jpg", "batch_2/2.jpg"])
    with pytest.raises(ValueError, match="differ only by a number"):
        _scan(image_file_factory.root)


@pytest.mark.parametrize("names", [("class_1", "class_2"), ("0", "1", "2"), ("a1", "b2")])
def test_numbered_class_names_without_a_label_file_are_classes(image_file_factory, names):
    _write(image_file_factory, [f"{name}/{index}.jpg" for index, name in enumerate(names)])
    assert _scan(image_file_factory.root).class_names == tuple(sorted(names))


def test_fruits360_split_folders_beside_papers_and_loose_images(image_file_factory):
    # Training/<class>, Test/<class>, test-multiple_fruits/*.jpg (no label), papers/*.pdf
    _write(image_file_factory, ["Training/Apple/1.jpg", "Training/Kiwi/2.jpg",
                                "Test/Apple/3.jpg", "Test/Kiwi/4.jpg",
                                "test-multiple_fruits/5.jpg"])
    image_file_factory.text("papers/fruits.pdf")
    image_file_factory.text("readme.md")
    scan = _scan(image_file_factory.root)
    assert scan.layout == "split_folders"
    assert scan.split_folder_names == {"train": "Training", "test": "Test"}
    assert scan.class_names == ("Apple", "Kiwi")
    warnings = "\n".join(scan.warnings)
    assert "'papers' holds no images; it was skipped" in warnings
    assert "'test-multiple_fruits' holds images outside class folders" in warnings


def test_a_folder_of_class_folders_beside_train_keeps_the_class_layout(image_file_factory):
    # "extra" may be a class of sub-folders: the layout stays class folders, with a warning
    _write(image_file_factory, ["train/a/1.jpg", "extra/b/2.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.layout == "class_folders"
    assert scan.class_names == ("extra", "train")


def test_tiny_imagenet_val_of_unsorted_images_gives_no_dev_split(image_file_factory):
    # train/<wnid>/images/*.JPEG; val/images/*.JPEG labelled in val/val_annotations.txt
    _write(image_file_factory, ["train/n01/images/1.JPEG", "train/n02/images/2.JPEG",
                                "val/images/3.JPEG", "val/images/4.JPEG"])
    image_file_factory.text("val/val_annotations.txt")
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("n01", "n02")
    assert scan.given_splits == ("train",)
    [warning] = [warning for warning in scan.warnings if "match none of train's" in warning]
    assert "Split folder 'val' holds folders (images)" in warning
    assert "no dev split is given" in warning
    assert not any(item.relative_path.startswith("val/") for item in scan.items)


def test_a_dev_folder_sharing_one_class_with_train_is_used(image_file_factory):
    _write(image_file_factory, ["train/cat/1.jpg", "train/dog/2.jpg", "val/cat/3.jpg",
                                "val/bird/4.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.given_splits == ("train", "dev")


@pytest.mark.parametrize(("train", "other", "split"), [
    ("rps", "rps-test-set", "test"),
    ("horse-or-human", "validation-horse-or-human", "dev"),
])
def test_the_one_folder_named_like_no_split_is_train_by_elimination(image_file_factory, train,
                                                                    other, split):
    _write(image_file_factory, [f"{train}/rock/1.jpg", f"{train}/paper/2.jpg",
                                f"{other}/rock/3.jpg", f"{other}/paper/4.jpg"])
    scan = _scan(image_file_factory.root)
    assert scan.split_folder_names == {"train": train, split: other}
    [warning] = [warning for warning in scan.warnings if "named like no split" in warning]
    assert f"'{train}' is named like no split; it was taken as the train split" in warning
    assert "data.split_folders" in warning


def test_kaggle_cifar10_label_file_is_named_in_the_error(image_file_factory, no_image_reads):
    # train/1.png ... with trainLabels.csv, test/ unlabelled
    _write(image_file_factory, ["train/1.jpg", "train/2.jpg", "test/3.jpg"])
    image_file_factory.text("trainLabels.csv")
    with pytest.raises(ValueError, match="never from a file like 'trainLabels.csv'"):
        _scan(image_file_factory.root)


def test_new_plant_diseases_split_folders_inside_beside_an_unlabelled_test(image_file_factory):
    # <name>/<name>/{train,valid}/<class>/ beside test/test/*.JPG (no labels)
    name = "New Plant Diseases Dataset(Augmented)"
    _write(image_file_factory, [f"{name}/{name}/train/Apple_scab/1.jpg",
                                f"{name}/{name}/train/Apple_healthy/2.jpg",
                                f"{name}/{name}/valid/Apple_scab/3.jpg",
                                f"{name}/{name}/valid/Apple_healthy/4.jpg", "test/test/5.JPG"])
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("Apple_healthy", "Apple_scab")
    assert scan.split_folder_names == {"train": f"{name}/{name}/train",
                                       "dev": f"{name}/{name}/valid"}
    [warning] = [warning for warning in scan.warnings if "'test' was skipped" in warning]
    assert f"the split folders are in '{name}/{name}'" in warning


def test_versions_of_the_same_images_are_named_in_the_ambiguity_error(image_file_factory,
                                                                     no_image_reads):
    _write(image_file_factory, [f"{version}/{label}/{index}.jpg"
                                for index, (version, label) in enumerate(
                                    [("color", "scab"), ("color", "rust"),
                                     ("grayscale", "scab"), ("grayscale", "rust")])])
    with pytest.raises(ValueError, match="If they are versions of the same images") as error:
        _scan(image_file_factory.root)
    assert f"data.path='{image_file_factory.root / 'color'}'" in str(error.value)


def test_roboflow_classification_export_names_its_classes_csv_not_its_readme(
        image_file_factory, no_image_reads):
    # {train,valid,test}/*.jpg with a one-hot _classes.csv in each split, README.roboflow.txt
    _write(image_file_factory, ["train/a_jpg.rf.1.jpg", "valid/b_jpg.rf.2.jpg",
                                "test/c_jpg.rf.3.jpg"])
    image_file_factory.text("train/_classes.csv")
    image_file_factory.text("README.roboflow.txt")
    with pytest.raises(ValueError, match="no image has a label") as error:
        _scan(image_file_factory.root)
    message = str(error.value)
    assert "never from a file like 'train/_classes.csv'" in message
    assert "README" not in message
