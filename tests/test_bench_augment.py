"""Tests for bench.bench_augment and bench.bench_augment_effect: smoke runs on tiny synthetic
images, and (marked slow) the augmentation effect on 10% of flowers128."""

import numpy as np
import pytest

from bench.bench_augment import (
    TRAIN_MODELS,
    bench_augment_speed,
    bench_input_pipeline,
    bench_online_training,
)
from bench.bench_augment_effect import (
    SMALL_DATA_SCHEDULE,
    compare_augmentation,
    subsample_train,
)
from bench.datasets import FLOWERS
from pipeline.data.prepare import PreparedData


def tiny_images(count: int = 8, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
            np.arange(count) % 2)


def test_bench_input_pipeline_reports_both_ratios():
    images, labels = tiny_images()
    result = bench_input_pipeline(images, labels, image_size=32, train_models=("small_cnn",),
                                  repeats=1)
    for key in ("augment_speedup_vs_numpy_function", "online_vs_preaugmented_train_speed",
                "augment_kernel_speedup_vs_albumentations"):
        assert np.isfinite(result[key]) and result[key] > 0, key
    assert result["online_train_model"] == "small_cnn"
    assert result["input_pipeline_source"] == "given"


@pytest.mark.e2e
@pytest.mark.parametrize("model", sorted(TRAIN_MODELS))
def test_bench_online_training_runs_every_model(model):
    images, labels = tiny_images()
    result = bench_online_training(images, labels, "light", 32, model=model, batch_size=4,
                                   repeats=1)
    assert result["online_train_images_per_s"] > 0 and result["preaugmented_train_images_per_s"] > 0


def test_bench_augment_speed_runs_a_chain_with_fallbacks():
    images, _ = tiny_images()
    result = bench_augment_speed(images, "strong", 24, batch_size=4, repeats=1)
    assert result["augment_images"] == 8 and result["augment_image_size"] == 24
    assert result["augment_speedup_vs_numpy_function"] > 0


def test_bench_errors_name_what_was_received():
    images, labels = tiny_images()
    with pytest.raises(ValueError, match="Received: images=ndarray, labels=NoneType"):
        bench_input_pipeline(images)
    with pytest.raises(ValueError, match="Unknown model 'resnet'"):
        bench_online_training(images, labels, "none", 32, model="resnet")


def test_subsample_train_keeps_a_share_of_every_class(tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    labels = {"train": np.repeat([0, 1, 2], [20, 30, 5]), "dev": np.arange(6) % 3,
              "test": np.arange(9) % 3}
    for split, split_labels in labels.items():
        np.save(source / f"{split}_labels.npy", split_labels)
        images = np.arange(len(split_labels), dtype=np.uint8)[:, None, None, None]
        np.save(source / f"{split}_images.npy", np.broadcast_to(images, (len(split_labels),
                                                                         2, 2, 3)))
    data = subsample_train(PreparedData(source, ("a", "b", "c"), 2), 0.1, tmp_path / "subset",
                           seed=0)
    assert np.bincount(data.labels("train")).tolist() == [2, 3, 1]
    kept = data.images("train")[:, 0, 0, 0]
    np.testing.assert_array_equal(labels["train"][kept], data.labels("train"))
    for split in ("dev", "test"):
        np.testing.assert_array_equal(data.labels(split), labels[split])
        assert len(data.images(split)) == len(labels[split])


def test_compare_augmentation_skips_without_the_folder(tmp_path):
    assert "skipped" in compare_augmentation(tmp_path / "absent")


@pytest.mark.slow
@pytest.mark.skipif(not FLOWERS.is_dir(), reason="flowers128 photos not present")
def test_augmentation_does_not_hurt_with_a_tenth_of_the_training_data():
    # 257 training photos, 897 test photos (one point is 9 photos): one seed's effect swings by
    # several points, so the mean over 3 seeds counts. With the folder recipe as tuned since,
    # and float16 features: -3.8, +2.5, -0.5 points (mean -0.6); seed 0 with float32 features
    # -0.6. (An earlier recipe gave +5.7, +6.0, +0.6; with the default, underfitting head
    # schedule -1.0, +0.3, -1.6: see SMALL_DATA_SCHEDULE.)
    effects = [compare_augmentation(FLOWERS, 0.1, overrides=(*SMALL_DATA_SCHEDULE,
                                                             f"train.seed={seed}"))
               ["augmentation_effect_points"] for seed in (0, 1, 2)]
    print(f"augmentation effect by seed, points: {effects}")
    assert np.mean(effects) > -1.0, effects
