"""Sampling: long-tail counts, nesting, seeds, base/new relabelling, id reuse."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tailprompt.data import load_dataset
from tailprompt.data.sampling import (
    class_keys,
    longtail_counts,
    sample_training_set,
    sampling_record,
    select_classes,
)
from tailprompt.testing.trees import EUROSAT_NAMES, make_dataset_tree, make_eurosat_tree


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory):
    return load_dataset("eurosat", make_eurosat_tree(tmp_path_factory.mktemp("eurosat")))


def test_exp_counts_follow_the_formula():
    assert longtail_counts(5, 16, 0.06) == [16, 7, 3, 1, 1]  # the "done when" numbers
    assert longtail_counts(5, 16, 1.0) == [16] * 5
    assert longtail_counts(3, 16, 0.25) == [16, 8, 4]  # exact powers must not round down
    assert longtail_counts(1, 16, 0.06) == [16]
    counts = longtail_counts(50, 16, 0.01)
    assert counts[0] == 16 and counts[-1] == 1 and counts == sorted(counts, reverse=True)


def test_step_and_counts_profiles():
    assert longtail_counts(4, 16, 0.25, "step") == [16, 16, 4, 4]
    assert longtail_counts(5, 16, 0.06, "step") == [16, 16, 16, 1, 1]
    names = ["a", "b", "c"]
    assert longtail_counts(3, 16, 1.0, "counts", {"c": 2, "a": 9, "b": 16, "other": 3}, names) == [9, 16, 2]
    with pytest.raises(ValueError, match=r"no count for class\(es\) \['c'\]"):
        longtail_counts(3, 16, 1.0, "counts", {"a": 1, "b": 1}, names)
    with pytest.raises(ValueError, match=r"counts\['a'\]: expected an integer in 1\.\.16"):
        longtail_counts(3, 16, 1.0, "counts", {"a": 17, "b": 1, "c": 1}, names)
    with pytest.raises(ValueError, match="profile"):
        longtail_counts(3, 16, 1.0, "linear")
    with pytest.raises(ValueError, match="tau"):
        longtail_counts(3, 16, 0.0)


def test_done_when_counts_on_eurosat_base(eurosat):
    base = select_classes(eurosat, "base")
    ts = sample_training_set(base, 16, 0.06, seed=1)
    assert list(ts.counts.values()) == [16, 7, 3, 1, 1]
    assert list(ts.counts) == EUROSAT_NAMES[:5]
    assert [len(v) for v in ts.ids.values()] == [16, 7, 3, 1, 1]
    assert len(ts.items) == 28 and [it.label for it in ts.items] == sorted(it.label for it in ts.items)


def test_base_new_split_relabels_from_zero(eurosat):
    base, new = select_classes(eurosat, "base"), select_classes(eurosat, "new")
    assert base.classnames == EUROSAT_NAMES[:5] and new.classnames == EUROSAT_NAMES[5:]
    assert {it.label for it in new.train} == set(range(5)) == {it.label for it in new.test}
    assert all(new.classnames[it.label] == it.classname for it in new.train + new.val + new.test)
    assert len(base.test) + len(new.test) == len(eurosat.test)
    assert select_classes(eurosat, "all") is eurosat
    odd = select_classes(select_classes(eurosat, "base"), "base")  # 5 classes -> ceil(5/2) = 3 base
    assert odd.num_classes == 3
    with pytest.raises(ValueError, match="base, new or all"):
        select_classes(eurosat, "head")


def test_subsets_nest_across_tau(eurosat):
    by_tau = {tau: sample_training_set(eurosat, 16, tau, seed=3).ids for tau in (1.0, 0.25, 0.06)}
    for cls, balanced in by_tau[1.0].items():
        assert len(balanced) == 16
        for tau in (0.25, 0.06):
            assert balanced[: len(by_tau[tau][cls])] == by_tau[tau][cls]


def test_seeds_are_deterministic_and_differ(eurosat):
    a = sample_training_set(eurosat, 4, 1.0, seed=1)
    b = sample_training_set(eurosat, 4, 1.0, seed=1)
    c = sample_training_set(eurosat, 4, 1.0, seed=2)
    assert a.ids == b.ids and [it.key for it in a.val_items] == [it.key for it in b.val_items]
    assert a.ids != c.ids


def test_sampling_ignores_global_rng_state(eurosat):
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    a = sample_training_set(eurosat, 8, 0.25, seed=7).ids
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    assert sample_training_set(eurosat, 8, 0.25, seed=7).ids == a
    random.setstate(state[0])
    assert random.random() == random.Random(0).random()  # sampling did not advance the global stream


def test_class_subset_is_independent_of_other_classes(eurosat):
    """A class draws the same images whether sampled among all classes or only the new ones."""
    full = sample_training_set(eurosat, 5, 1.0, seed=4).ids
    new = sample_training_set(select_classes(eurosat, "new"), 5, 1.0, seed=4).ids
    assert all(new[name] == full[name] for name in new)


def test_val_takes_min_shots_4(eurosat, tmp_path):
    assert len(sample_training_set(eurosat, 16, 1.0, seed=1).val_items) == 10 * 2  # only 2 val images per class
    assert len(sample_training_set(eurosat, 1, 1.0, seed=1).val_items) == 10 * 1
    ds = load_dataset("imagenet", make_dataset_tree("imagenet", tmp_path, images_per_class=20))
    ts = sample_training_set(ds, 16, 1.0, seed=1)  # ImageNet val = test (5 images per class here)
    assert len(ts.val_items) == 6 * 4 and all(it in ds.test for it in ts.val_items)
    assert len(sample_training_set(ds, 2, 1.0, seed=1).val_items) == 6 * 2


def test_fewshot_ids_reuse_exact_subset(eurosat, tmp_path):
    base = select_classes(eurosat, "base")
    ts = sample_training_set(base, 16, 0.06, seed=1)
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(sampling_record(base, 1, ts)))
    again = sample_training_set(base, 16, 1.0, seed=9, fewshot_ids=path)  # shots/tau/seed do not matter
    assert again.ids == ts.ids and again.counts == ts.counts
    assert [it.key for it in again.items] == [it.key for it in ts.items]
    broken = sampling_record(base, 1, ts)
    broken["ids"]["Forest"] = ["2750/Forest/not_there.jpg"]
    with pytest.raises(ValueError, match=r"not_there\.jpg.*not training images of class 'Forest'"):
        sample_training_set(base, 16, 1.0, seed=1, fewshot_ids=broken)
    del broken["ids"]["Forest"]
    with pytest.raises(ValueError, match=r"no ids for class\(es\) \['Forest'\]"):
        sample_training_set(base, 16, 1.0, seed=1, fewshot_ids=broken)


def test_counts_file_profile(eurosat, tmp_path):
    base = select_classes(eurosat, "base")
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({name: i + 1 for i, name in enumerate(EUROSAT_NAMES)}))
    ts = sample_training_set(base, 16, 1.0, seed=1, profile="counts", counts=path)
    assert list(ts.counts.values()) == [1, 2, 3, 4, 5]


def test_shots_above_available_keep_all(eurosat):
    ts = sample_training_set(eurosat, 100, 1.0, seed=1)
    assert set(ts.counts.values()) == {16}


def test_test_only_dataset_cannot_be_sampled(tmp_path):
    ds = load_dataset("imagenet_a", make_dataset_tree("imagenet_a", tmp_path, images_per_class=2))
    with pytest.raises(ValueError, match="no training split"):
        sample_training_set(ds, 16, 1.0, seed=1)


def test_class_keys_disambiguate_repeated_names():
    assert class_keys(["crane", "cat", "crane"]) == ["crane", "cat", "crane#2"]
