"""Which images the post-hoc temperature is fitted on."""

import dataclasses

from tailprompt.data.registry import load_dataset
from tailprompt.data.sampling import sample_training_set, select_classes
from tailprompt.engine.run import calibration_items


def _setup(eurosat_root, shots):
    ds = select_classes(load_dataset("eurosat", eurosat_root), "base")
    return ds, sample_training_set(ds, shots, 1.0, seed=1)


def test_uses_the_few_shot_validation_split_when_it_is_disjoint_from_test(eurosat_root):
    ds, training = _setup(eurosat_root, 4)
    items, source = calibration_items(ds, training, seed=1)
    assert items == training.val_items and source == "few-shot validation split"


def test_imagenet_style_val_equal_to_test_falls_back_to_unused_training_images(eurosat_root):
    ds, training = _setup(eurosat_root, 4)
    ds = dataclasses.replace(ds, val=list(ds.test))  # CoOp's ImageNet reader: val is the test set
    training = dataclasses.replace(training, val_items=list(ds.test))
    items, source = calibration_items(ds, training, seed=1)
    trained = {it.key for it in training.items}
    test = {it.key for it in ds.test}
    assert source.startswith("held-out training images")
    assert items and not ({it.key for it in items} & (trained | test))
    assert items == calibration_items(ds, training, seed=1)[0]  # seeded
    assert max(sum(it.label == c for it in items) for c in range(ds.num_classes)) <= 4


def test_last_resort_is_the_training_set_and_says_so(eurosat_root):
    ds, training = _setup(eurosat_root, 16)  # 16 of 16 training images per class are used
    ds = dataclasses.replace(ds, val=[])
    training = dataclasses.replace(training, val_items=[])
    items, source = calibration_items(ds, training, seed=1)
    assert items == training.items and "optimistic" in source
