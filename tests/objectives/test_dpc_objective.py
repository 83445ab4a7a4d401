"""DPC's hard-negative batches and contrastive loss against a transcription of the reference loop."""

from __future__ import annotations

import math
import random
import types

import pytest
import torch

from tailprompt.objectives.dpc import (
    class_image_pools,
    grown_batch_features,
    grown_batch_labels,
    hard_negative_classes,
    hard_negative_contrastive_loss,
    pick_class_images,
    stage1_class_scores,
    symmetric_contrastive_loss,
)


def reference_hard_negatives(similarity, label, topk_sum, class_count, randint):
    """`parse_sple_batch_train`'s selection, statement by statement (`randint(a, b)` inclusive)."""
    objects_in_batch = label.tolist()
    return [reference_hard_negatives_for(similarity[i], label[i], topk_sum, class_count, objects_in_batch, randint)
            for i in range(similarity.shape[0])]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("num_classes", "batch", "top_k"),
                         [(12, 4, 8), (5, 4, 5), (40, 4, 8), (9, 8, 3), (9, 3, 1), (12, 2, 2)])
def test_hard_negatives_equal_the_reference_selection(seed, num_classes, batch, top_k):
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(batch + num_classes, 16, generator=g), dim=-1)
    labels = torch.randperm(num_classes, generator=g)[:batch]
    scores = stage1_class_scores(feats[:batch], feats[batch:])
    random.seed(7)  # the reference draws from the global `random`
    expected = reference_hard_negatives(scores, labels, top_k, num_classes, random.randint)
    got = hard_negative_classes(scores, labels, top_k, random.Random(7))
    assert got == expected
    flat = labels.tolist() + [c for negs in got for c in negs]
    assert len(flat) == len(set(flat))  # non-repeat: every class once in the grown batch


def test_hard_negatives_by_hand():
    # Image 0 (label 0) ranks 0, 3, 5, 6 -> [3, 5, 6]; image 1 (label 1) ranks 3, 1, 7, 2, and 3 is taken.
    scores = torch.tensor([
        [0.40, 0.01, 0.01, 0.30, 0.01, 0.15, 0.10, 0.02],
        [0.01, 0.30, 0.05, 0.45, 0.01, 0.01, 0.01, 0.16],
    ])
    got = hard_negative_classes(scores, torch.tensor([0, 1]), 4, random.Random(0))
    assert got == [[3, 5, 6], [7, 2]]


@pytest.mark.parametrize("seed", range(20))
def test_random_top_up_draws_unused_classes_from_one_to_k_minus_two(seed):
    # Image 1 ranks only classes already in the batch, so it gets 2 random ones from 1..K-2 = 1..6.
    scores = torch.tensor([
        [0.40, 0.01, 0.01, 0.30, 0.01, 0.15, 0.10, 0.02],
        [0.30, 0.25, 0.01, 0.40, 0.01, 0.01, 0.01, 0.01],
    ])
    got = hard_negative_classes(scores, torch.tensor([0, 1]), 3, random.Random(seed))
    assert got[0] == [3, 5]
    assert len(got[1]) <= 2 and set(got[1]) <= {2, 4, 6} and len(set(got[1])) == len(got[1])


def test_top_k_is_clamped_to_the_label_space():
    scores = torch.softmax(torch.randn(2, 3, generator=torch.Generator().manual_seed(1)), -1)
    got = hard_negative_classes(scores, torch.tensor([0, 2]), 8, random.Random(0))
    assert got == [[1], []]  # only class 1 is left; K - 2 = 1 draw of class 1 finds nothing new


def test_stage1_scores_use_the_fixed_scale():
    img = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    torch.testing.assert_close(stage1_class_scores(img, txt), torch.softmax(100.0 * img @ txt.T, -1))


def test_images_are_drawn_from_the_class_pool():
    labels = [0, 1, 1, 2, 1, 0]
    pools = class_image_pools(labels, 4)
    assert pools == [[0, 5], [1, 2, 4], [3], []]
    g = random.Random(0)
    draws = [pick_class_images([1, 2, 0], pools, g) for _ in range(200)]
    assert all(labels[a] == 1 and labels[b] == 2 and labels[c] == 0 for a, b, c in draws)
    assert {d[0] for d in draws} == {1, 2, 4}  # uniform over the pool: every image gets drawn
    with pytest.raises(ValueError, match="class 3"):
        pick_class_images([3], pools, g)


def test_grown_batch_interleaves_each_image_with_its_negatives():
    negatives = [[5, 6], [], [7]]
    labels = grown_batch_labels(torch.tensor([0, 1, 2]), negatives)
    assert labels.tolist() == [0, 5, 6, 1, 2, 7]
    batch = torch.arange(3.0).unsqueeze(1) * torch.ones(1, 2)  # rows 0, 1, 2
    extra = 10 + torch.arange(3.0).unsqueeze(1) * torch.ones(1, 2)  # rows 10, 11, 12
    rows = grown_batch_features(batch, extra, negatives)
    assert rows[:, 0].tolist() == [0.0, 10.0, 11.0, 1.0, 2.0, 12.0]


def test_symmetric_contrastive_loss_matches_the_formula():
    g = torch.Generator().manual_seed(4)
    img = torch.nn.functional.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=-1)
    s = 100.0
    sim = (s * img @ txt.T).tolist()
    n = len(sim)
    row = -sum(sim[i][i] - math.log(sum(math.exp(v) for v in sim[i])) for i in range(n)) / n
    col = -sum(sim[i][i] - math.log(sum(math.exp(sim[j][i]) for j in range(n))) for i in range(n)) / n
    assert symmetric_contrastive_loss(img, txt, s).item() == pytest.approx((row + col) / 2, rel=1e-10)
    assert symmetric_contrastive_loss(img * 3, txt, s).item() == pytest.approx((row + col) / 2, rel=1e-10)
    # Perfectly paired distinct rows at a large scale: the loss vanishes.
    eye = torch.eye(4, dtype=torch.float64)
    assert symmetric_contrastive_loss(eye, eye, 100.0).item() < 1e-30


def reference_dpc_step(stage1_img, stage1_txt, label, item_feats, item_labels, image_feats, text_feats, scale,
                       topk_sum):
    """`parse_sple_batch_train` + `forward_backward` of `sple_coop.py` on features: per image, select its
    hard negatives, then draw one image of each (`random.choice` over the class's list), then the next image."""
    similarity = (100.0 * stage1_img @ stage1_txt.T).softmax(dim=-1)
    class_count = stage1_txt.shape[0]
    objects_in_batch = label.tolist()
    rows, labels = [], []
    for sample_id in range(label.shape[0]):
        chosen = reference_hard_negatives_for(similarity[sample_id], label[sample_id], topk_sum, class_count,
                                              objects_in_batch, random.randint)
        rows.append(image_feats[sample_id])
        labels.append(int(label[sample_id]))
        for obj_id in chosen:
            pic_list = [i for i in range(len(item_labels)) if item_labels[i] == obj_id]
            rows.append(item_feats[random.choice(pic_list)])
            labels.append(obj_id)
    img = torch.stack(rows)
    txt = text_feats[labels]
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    logits_per_img = scale * img @ txt.t()
    ids = torch.arange(len(labels))
    ce = torch.nn.functional.cross_entropy
    return (ce(logits_per_img, ids) + ce(logits_per_img.t(), ids)) / 2


def reference_hard_negatives_for(row, gt, topk_sum, class_count, objects_in_batch, randint):
    values, indices = row.topk(topk_sum)
    before, hn_labels = [], []
    for _value, index in zip(values, indices):
        if index != gt and len(hn_labels) < topk_sum - 1:
            before.append(index)
    for item in before:
        if item not in objects_in_batch:
            hn_labels.append(item)
            objects_in_batch.append(item)
    if len(hn_labels) < 2:
        for _step in range(0, class_count - 2):
            neg_label = randint(1, class_count - 2)
            if neg_label not in objects_in_batch and len(hn_labels) < 2:
                hn_labels.append(neg_label)
                objects_in_batch.append(neg_label)
            elif len(hn_labels) < 2:
                continue
            else:
                break
    return [int(x) for x in hn_labels]


@pytest.mark.parametrize("seed", range(4))
def test_dpc_step_loss_equals_the_reference_step(seed):
    g = torch.Generator().manual_seed(seed)
    k, d, b = 10, 12, 4
    unit = torch.nn.functional.normalize
    item_labels = [c for c in range(k) for _ in range(3)]  # 3 training images per class
    item_feats = unit(torch.randn(len(item_labels), d, generator=g), dim=-1)
    batch_items = torch.randperm(len(item_labels), generator=g)[:b]
    labels = torch.tensor([item_labels[i] for i in batch_items])
    text = unit(torch.randn(k, d, generator=g), dim=-1).requires_grad_(True)
    stage1_text = unit(text.detach() + 0.3 * torch.randn(k, d, generator=g), dim=-1)
    state = types.SimpleNamespace(
        labels=labels, image_feats=item_feats[batch_items], text_feats=text, logit_scale=100.0,
        aux={"dpc_stage1_text_feats": stage1_text}, encode_training_images=lambda idx: item_feats[idx],
    )
    pools = class_image_pools(item_labels, k)
    got = hard_negative_contrastive_loss(state, 8, pools, random.Random(seed + 10))
    random.seed(seed + 10)  # the reference draws from the global `random`
    expected = reference_dpc_step(item_feats[batch_items], stage1_text, labels, item_feats, item_labels,
                                  item_feats[batch_items], text, 100.0, 8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)
    grad_got, = torch.autograd.grad(got, text)
    grad_ref, = torch.autograd.grad(expected, text)
    torch.testing.assert_close(grad_got, grad_ref, atol=1e-6, rtol=1e-5)


def test_image_prompting_learners_rank_with_their_stage1_image_features():
    g = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize
    k, d = 6, 8
    stage1_text = unit(torch.randn(k, d, generator=g), dim=-1)
    own = unit(torch.randn(2, d, generator=g), dim=-1)
    stage1_img = stage1_text[[3, 4]]  # the stage-1 model sees classes 3 and 4 as the best matches
    seen = []
    state = types.SimpleNamespace(
        labels=torch.tensor([0, 1]), image_feats=own, text_feats=unit(torch.randn(k, d, generator=g), dim=-1),
        logit_scale=10.0, aux={"dpc_stage1_text_feats": stage1_text, "dpc_stage1_image_feats": stage1_img},
        encode_training_images=lambda idx: seen.append(idx.tolist()) or own.new_zeros(len(idx), d) + 1.0,
    )
    hard_negative_contrastive_loss(state, 2, class_image_pools(list(range(k)), k), random.Random(0))
    assert seen[0][0] == 3 and 4 in seen[0]  # image 0's first negative is class 3 (item c is of class c)


@pytest.mark.parametrize("pool", ["training_items", "train_split"])
def test_registered_objective_draws_from_the_configured_pool(pool):
    from tailprompt.objectives import OBJECTIVES, ObjectiveContext
    from tailprompt.schema import from_dict

    spec = OBJECTIVES.get("dpc")
    assert spec.default_weights == {"contrastive": 1.0}
    assert {"encode_training_images", "dpc_stage1_text_feats"} <= spec.reads
    k, d = 4, 8
    unit = torch.nn.functional.normalize
    g = torch.Generator().manual_seed(5)
    # Training items 0..3 (one per class); the rest of the split: items 4..11, two more per class.
    context = ObjectiveContext(torch.zeros(k, d), [f"c{i}" for i in range(k)], training_labels=[0, 1, 2, 3],
                               extra_labels=[0, 0, 1, 1, 2, 2, 3, 3])
    objective = spec.make(from_dict(spec.config_cls, {"image_pool": pool, "top_k": 4}), context)
    requested = []
    feats = unit(torch.randn(12, d, generator=g), dim=-1)
    state = types.SimpleNamespace(
        labels=torch.tensor([0]), image_feats=feats[:1], text_feats=unit(torch.randn(k, d, generator=g), dim=-1),
        logit_scale=100.0, aux={"dpc_stage1_text_feats": unit(torch.randn(k, d, generator=g), dim=-1)},
        encode_training_images=lambda idx: requested.extend(idx.tolist()) or feats[idx],
        generator=torch.Generator().manual_seed(0),
    )
    for _ in range(20):
        loss = objective.terms(state)["contrastive"]
        assert loss.ndim == 0 and torch.isfinite(loss)
    allowed = {1, 2, 3} if pool == "training_items" else {1, 2, 3, 6, 7, 8, 9, 10, 11}
    assert set(requested) <= allowed and len(requested) == 60  # classes 1, 2, 3 every step
    if pool == "train_split":
        assert set(requested) & {6, 7, 8, 9, 10, 11}
