"""Tests for pipeline.data.folder: layouts, bad files, links, duplicates, the real dataset."""

from __future__ import annotations

import os
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.folder import FolderScan, scan_image_folder
from pipeline.data.images import MAX_PIXELS_CONFIG_KEY

FLOWERS128 = Path(__file__).resolve().parents[2] / "shared/datasets/flowers128"


def _scan(root: Path, **options) -> FolderScan:
    return scan_image_folder(root, show_progress=False, **options)


def _skipped_by_name(scan: FolderScan) -> dict[str, tuple[str, str]]:
    """{file name: (kind, reason)} of every skipped path."""
    return {entry.path.name: (entry.kind, entry.reason) for entry in scan.skipped}


def _two_classes(factory) -> None:
    factory.jpeg("cat/c1.jpg", seed=1)
    factory.jpeg("dog/d1.jpg", seed=2)


# Layouts and class names


def test_class_folders_with_any_nesting_depth(image_file_factory):
    image_file_factory.jpeg("dog/d1.jpg", seed=1)
    image_file_factory.jpeg("cat/2019/summer/beach/c1.jpg", seed=2)
    image_file_factory.jpeg("cat/c2.jpg", seed=3)
    scan = _scan(image_file_factory.root)
    assert scan.layout == "class_folders"
    assert scan.class_names == ("cat", "dog")
    assert [(item.relative_path, item.label) for item in scan.items] == [
        ("cat/2019/summer/beach/c1.jpg", 0),
        ("cat/c2.jpg", 0),
        ("dog/d1.jpg", 1),
    ]
    assert all(item.given_split is None and len(item.content_hash) == 32 for item in scan.items)
    assert scan.image_sizes == [(24, 16)] * 3


def test_split_folders_keep_the_given_splits(image_file_factory):
    image_file_factory.jpeg("train/cat/c1.jpg", seed=1)
    image_file_factory.jpeg("train/dog/d1.jpg", seed=2)
    image_file_factory.jpeg("val/cat/c2.jpg", seed=3)
    image_file_factory.jpeg("test/dog/sub/d2.jpg", seed=4)
    scan = _scan(image_file_factory.root)
    assert scan.layout == "split_folders"
    assert scan.class_names == ("cat", "dog")
    assert scan.given_splits == ("train", "dev", "test")
    assert scan.split_folder_names == {"train": "train", "dev": "val", "test": "test"}
    assert {item.relative_path: (item.given_split, item.label) for item in scan.items} == {
        "train/cat/c1.jpg": ("train", 0),
        "train/dog/d1.jpg": ("train", 1),
        "val/cat/c2.jpg": ("dev", 0),
        "test/dog/sub/d2.jpg": ("test", 1),
    }


def test_a_class_named_like_a_split_does_not_switch_layout(image_file_factory):
    image_file_factory.jpeg("test/t1.jpg", seed=1)
    image_file_factory.jpeg("zebra/z1.jpg", seed=2)
    scan = _scan(image_file_factory.root)
    assert scan.layout == "class_folders"
    assert scan.class_names == ("test", "zebra")
    assert scan.given_splits == ()


def test_non_ascii_class_names_are_nfc_and_sorted(image_file_factory):
    image_file_factory.jpeg(unicodedata.normalize("NFD", "café/1.jpg"), seed=1)
    image_file_factory.jpeg(unicodedata.normalize("NFC", "Äpfel/1.jpg"), seed=2)
    image_file_factory.jpeg("apple/1.jpg", seed=3)
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("apple", "café", "Äpfel")
    assert all(unicodedata.is_normalized("NFC", name) for name in scan.class_names)


def test_file_names_with_spaces_and_non_ascii_in_nfc_and_nfd(image_file_factory):
    image_file_factory.jpeg(unicodedata.normalize("NFC", "cat/my café photo.jpg"), seed=1)
    image_file_factory.jpeg(unicodedata.normalize("NFD", "dog/été à Zürich.jpg"), seed=2)
    scan = _scan(image_file_factory.root)
    assert [item.relative_path for item in scan.items] == [
        "cat/my café photo.jpg",
        unicodedata.normalize("NFC", "dog/été à Zürich.jpg"),
    ]
    assert scan.skipped == ()


# Clear errors for unusable roots


def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder.*does not exist"):
        _scan(missing)


def test_root_that_is_a_file_is_refused(image_file_factory):
    path = image_file_factory.jpeg("a.jpg")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        _scan(path)


def test_empty_root_explains_the_expected_layout(tmp_path):
    with pytest.raises(ValueError, match=r"has no class folders.*one sub-folder per class"):
        _scan(tmp_path)


def test_images_directly_in_the_root_are_counted_in_the_error(image_file_factory):
    image_file_factory.jpeg("a.jpg")
    with pytest.raises(ValueError, match="holds 1 file"):
        _scan(image_file_factory.root)


def test_a_single_class_is_refused(image_file_factory):
    image_file_factory.jpeg("cat/c1.jpg")
    with pytest.raises(ValueError, match=r"1 usable class\(es\) \('cat'\).*at least 2"):
        _scan(image_file_factory.root)


@pytest.mark.parametrize(
    ("option", "value"), [("on_bad_file", "ignore"), ("on_label_conflict", "drop")]
)
def test_unknown_policy_values_are_refused(image_file_factory, option, value):
    _two_classes(image_file_factory)
    with pytest.raises(ValueError, match=f"Received: {option}='{value}'"):
        _scan(image_file_factory.root, **{option: value})


# Empty and tiny classes


def test_class_without_usable_images_is_excluded_with_a_warning(image_file_factory):
    _two_classes(image_file_factory)
    image_file_factory.jpeg("bird/b1.jpg", seed=3)
    image_file_factory.text("empty_class/notes.jpg")
    scan = _scan(image_file_factory.root)
    assert scan.class_names == ("bird", "cat", "dog")
    assert scan.excluded_classes == ("empty_class",)
    assert any("'empty_class' has no usable images" in warning for warning in scan.warnings)


def test_class_with_a_single_image_is_warned_about(image_file_factory):
    _two_classes(image_file_factory)
    image_file_factory.jpeg("cat/c2.jpg", seed=3)
    scan = _scan(image_file_factory.root)
    assert any("'dog' has only 1 image" in warning for warning in scan.warnings)
    assert not any("'cat'" in warning for warning in scan.warnings)


# Bad, hidden, unsupported and odd files


def test_every_kind_of_bad_file_is_skipped_with_a_reason(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    factory.truncated_jpeg("cat/truncated.jpg")
    factory.write_bytes("cat/zero.jpg", b"")
    factory.text("cat/text.jpg")
    factory.png_header_only("cat/huge.png", 9000, 9000)
    scan = _scan(factory.root)
    skipped = _skipped_by_name(scan)
    assert skipped["truncated.jpg"][0] == "bad" and "truncated" in skipped["truncated.jpg"][1]
    assert skipped["zero.jpg"] == ("bad", "empty file (0 bytes)")
    assert skipped["text.jpg"][0] == "bad" and "text" in skipped["text.jpg"][1]
    assert skipped["huge.png"][0] == "bad" and MAX_PIXELS_CONFIG_KEY in skipped["huge.png"][1]
    assert all("\n" not in reason for _, reason in skipped.values())
    assert [item.relative_path for item in scan.items] == ["cat/c1.jpg", "dog/d1.jpg"]


def test_content_decides_the_type_so_renamed_images_are_used(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    factory.gif("cat/really_a_gif.jpg", ((255, 0, 0),))
    factory.png("dog/really_a_png.jpg", np.zeros((4, 4, 3), dtype=np.uint8))
    factory.gif("dog/animated.gif", ((0, 255, 0), (0, 0, 255)))
    factory.jpeg("dog/UPPER.JPG", seed=5)
    scan = _scan(factory.root)
    assert scan.skipped == ()
    assert {
        "cat/really_a_gif.jpg",
        "dog/really_a_png.jpg",
        "dog/animated.gif",
        "dog/UPPER.JPG",
    } <= {item.relative_path for item in scan.items}


def test_hidden_and_system_files_are_skipped_and_reported(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    factory.ds_store(".DS_Store")
    factory.ds_store("cat/.DS_Store")
    factory.apple_double("cat/._c1.jpg")
    factory.jpeg("dog/.hidden.jpg", seed=9)
    factory.apple_double("__MACOSX/cat/._c1.jpg")
    factory.write_bytes("dog/Thumbs.db", b"\x00" * 32)
    scan = _scan(factory.root)
    kinds = {
        str(entry.path.relative_to(factory.root)): (entry.kind, entry.reason)
        for entry in scan.skipped
    }
    assert kinds[".DS_Store"] == ("hidden", "macOS folder metadata (.DS_Store), not an image")
    assert kinds["cat/.DS_Store"][0] == "hidden"
    assert kinds["cat/._c1.jpg"] == (
        "hidden",
        "macOS AppleDouble metadata file (._ prefix), not an image",
    )
    assert kinds["dog/.hidden.jpg"][0] == "hidden"
    assert kinds["__MACOSX"][0] == "hidden"
    assert kinds["dog/Thumbs.db"][0] == "hidden"
    assert scan.class_names == ("cat", "dog")
    assert len(scan.items) == 2


def test_unsupported_formats_are_counted_by_content_and_extension(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    factory.tiff("cat/a.tif")
    factory.tiff("cat/tiff_named.jpg")
    factory.heic("dog/c.heic")
    factory.write_bytes("dog/d.heic", b"\x00" * 40)  # content unknown: extension decides
    factory.write_bytes("dog/e.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    scan = _scan(factory.root)
    assert scan.unsupported == {"heic": 2, "svg": 1, "tiff": 2}
    skipped = _skipped_by_name(scan)
    assert skipped["tiff_named.jpg"][0] == "unsupported"
    assert "unsupported image format 'tiff'" in skipped["tiff_named.jpg"][1]
    assert len(scan.items) == 2


def test_webp_photos_are_images_whatever_their_extension(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    factory.webp("cat/a.webp")
    factory.save("dog/webp_named.jpg", Image.new("RGBA", (8, 8), (9, 9, 9, 128)), "WEBP")
    scan = _scan(factory.root, on_bad_file="error")
    assert scan.unsupported == {}
    assert {item.relative_path for item in scan.items} == {
        "cat/c1.jpg", "cat/a.webp", "dog/d1.jpg", "dog/webp_named.jpg"}


def test_other_files_are_ignored_not_errors(image_file_factory):
    _two_classes(image_file_factory)
    image_file_factory.text("cat/README.txt")
    image_file_factory.text("labels.csv")
    scan = _scan(image_file_factory.root, on_bad_file="error")
    skipped = _skipped_by_name(scan)
    assert skipped["README.txt"][0] == "ignored"
    assert skipped["labels.csv"] == ("ignored", "not inside a class folder, so it has no label")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_symlink_loops_and_dangling_links_are_reported(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    (factory.root / "cat" / "loop").symlink_to(factory.root / "cat", target_is_directory=True)
    (factory.root / "cat" / "self").symlink_to(factory.root / "cat" / "self")
    (factory.root / "dog" / "gone.jpg").symlink_to(factory.root / "nowhere.jpg")
    outside_root = factory.jpeg("../elsewhere/d2.jpg", seed=3)
    (factory.root / "dog" / "linked.jpg").symlink_to(outside_root)
    scan = _scan(factory.root)
    skipped = _skipped_by_name(scan)
    assert skipped["loop"][0] == "link" and "already scanned" in skipped["loop"][1]
    assert skipped["self"][0] == "link" and "symlink loop" in skipped["self"][1]
    assert skipped["gone.jpg"][0] == "link" and "dangling symlink" in skipped["gone.jpg"][1]
    assert {item.relative_path for item in scan.items} == {
        "cat/c1.jpg",
        "dog/d1.jpg",
        "dog/linked.jpg",
    }


def test_on_bad_file_error_names_the_file(image_file_factory):
    _two_classes(image_file_factory)
    image_file_factory.ds_store("cat/.DS_Store")  # hidden files never raise
    image_file_factory.truncated_jpeg("dog/broken.jpg")
    with pytest.raises(ValueError, match=r"broken\.jpg.*truncated.*on_bad_file='skip'"):
        _scan(image_file_factory.root, on_bad_file="error")


def test_on_bad_file_error_covers_unsupported_formats(image_file_factory):
    _two_classes(image_file_factory)
    image_file_factory.tiff("dog/photo.tif")
    with pytest.raises(ValueError, match=r"photo\.tif.*unsupported image format 'tiff'"):
        _scan(image_file_factory.root, on_bad_file="error")


def test_without_decode_verification_only_headers_are_checked(image_file_factory):
    _two_classes(image_file_factory)
    image_file_factory.truncated_jpeg("dog/cut.jpg")
    image_file_factory.text("dog/text.jpg")
    scan = _scan(image_file_factory.root, verify_decode=False)
    assert "dog/cut.jpg" in {item.relative_path for item in scan.items}
    assert _skipped_by_name(scan)["text.jpg"][0] == "bad"


def test_max_pixels_is_passed_to_the_check(image_file_factory):
    _two_classes(image_file_factory)
    image_file_factory.jpeg("dog/big.jpg", size=(64, 64), seed=3)
    scan = _scan(image_file_factory.root, max_pixels=32 * 32)
    assert _skipped_by_name(scan)["big.jpg"][0] == "bad"


def test_progress_bar_is_shown_only_when_asked(image_file_factory, capsys):
    _two_classes(image_file_factory)
    scan_image_folder(image_file_factory.root, show_progress=True)
    assert "Scanning images" in capsys.readouterr().err
    scan_image_folder(image_file_factory.root, show_progress=False)
    assert "Scanning images" not in capsys.readouterr().err


# Duplicates and label conflicts


def test_duplicates_in_one_class_are_kept_and_reported(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    factory.write_bytes("cat/copy.jpg", (factory.root / "cat/c1.jpg").read_bytes())
    scan = _scan(factory.root)
    assert scan.duplicate_groups == (("cat/c1.jpg", "cat/copy.jpg"),)
    assert scan.label_conflicts == ()
    hashes = {item.relative_path: item.content_hash for item in scan.items}
    assert hashes["cat/c1.jpg"] == hashes["cat/copy.jpg"]


def test_duplicates_under_two_classes_are_conflicts_and_excluded(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    factory.jpeg("cat/c2.jpg", seed=3)
    factory.write_bytes("dog/same_as_c2.jpg", (factory.root / "cat/c2.jpg").read_bytes())
    scan = _scan(factory.root)
    assert scan.label_conflicts == (("cat/c2.jpg", "dog/same_as_c2.jpg"),)
    assert scan.duplicate_groups == scan.label_conflicts
    assert [item.relative_path for item in scan.items] == ["cat/c1.jpg", "dog/d1.jpg"]
    assert any("label conflicts" in warning for warning in scan.warnings)


def test_label_conflicts_can_be_kept_or_raised(image_file_factory):
    factory = image_file_factory
    _two_classes(factory)
    factory.write_bytes("dog/same_as_c1.jpg", (factory.root / "cat/c1.jpg").read_bytes())
    kept = _scan(factory.root, on_label_conflict="keep")
    assert len(kept.items) == 3
    with pytest.raises(ValueError, match=r"different classes, e\.g\. cat/c1\.jpg"):
        _scan(factory.root, on_label_conflict="error")


def test_copies_in_two_given_splits_are_reported_as_leaks(image_file_factory):
    factory = image_file_factory
    factory.jpeg("train/cat/c1.jpg", seed=1)
    factory.jpeg("train/dog/d1.jpg", seed=2)
    factory.write_bytes("test/cat/c1_again.jpg", (factory.root / "train/cat/c1.jpg").read_bytes())
    scan = _scan(factory.root)
    assert scan.split_leaks == (("test/cat/c1_again.jpg", "train/cat/c1.jpg"),)
    assert any("different given splits" in warning for warning in scan.warnings)


# The real dataset


def test_flowers128_scans_cleanly():
    if not FLOWERS128.is_dir():
        pytest.skip(f"real dataset not found at {FLOWERS128}")
    started = time.perf_counter()
    scan = _scan(FLOWERS128)
    seconds = time.perf_counter() - started
    assert scan.class_names == ("daisy", "dandelion", "rose", "sunflower", "tulip")
    assert [(entry.path.name, entry.kind) for entry in scan.skipped] == [(".DS_Store", "hidden")]
    assert scan.unsupported == {}
    # 6 groups of byte-identical files: 4 filed under two classes (rose and tulip),
    # 2 inside sunflower. Conflicting copies are excluded: 4,317 files - 8 = 4,309 items.
    assert len(scan.duplicate_groups) == 6
    assert len(scan.label_conflicts) == 4
    assert all(
        {path.split("/")[0] for path in group} == {"rose", "tulip"}
        for group in scan.label_conflicts
    )
    assert len(scan.items) == 4309
    assert seconds < 20, f"scan took {seconds:.1f} s; mark this test slow"
