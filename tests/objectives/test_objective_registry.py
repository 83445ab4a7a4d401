"""Every registered objective, whatever it is: term names, both text-feature shapes, gradients, declared reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tailprompt.backbone import load_backbone
from tailprompt.clustering import ClusterSettings
from tailprompt.objectives import OBJECTIVES, OPTIONAL_FIELDS, ObjectiveContext
from tailprompt.prompts import LEARNERS
from tailprompt.schema import from_dict

# D is tiny-vit's joint width: the context carries that backbone, as the engine's does, for objectives that
# encode a teacher fixed for the run at build time (PromptSRC's template ensemble).
K, D, B = 6, 64, 5


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny-vit")


def declared_only(state, reads: frozenset[str], gen: torch.Generator):
    """`state` with every optional field the objective did not declare set to None (so reading one fails)."""
    values = {
        "teacher_image_feats": torch.nn.functional.normalize(torch.randn(B, D, generator=gen), dim=-1),
        "description_text_feats": torch.nn.functional.normalize(torch.randn(K, D, generator=gen), dim=-1),
        "encode_training_images": lambda idx: torch.nn.functional.normalize(torch.randn(len(idx), D), dim=-1),
    }
    changes = {name: (getattr(state, name) if getattr(state, name) is not None else values.get(name))
               if name in reads else None for name in OPTIONAL_FIELDS}
    return dataclasses.replace(state, **changes, item_indices=torch.arange(B), generator=gen)


def test_every_read_is_a_step_field_or_provided_by_some_learner():
    provided = frozenset().union(*(LEARNERS.get(n).provides for n in LEARNERS.names()))
    for name in OBJECTIVES.names():
        spec = OBJECTIVES.get(name)
        assert spec.reads <= OPTIONAL_FIELDS | provided, name
        assert spec.default_weights and all(isinstance(w, float) for w in spec.default_weights.values()), name


def step_field_objectives() -> list[str]:
    """Objectives whose inputs are all `StepState` fields (those reading a learner's aux outputs are tested
    with that learner, in their own test file)."""
    return [n for n in OBJECTIVES.names() if OBJECTIVES.get(n).reads <= OPTIONAL_FIELDS]


@pytest.mark.parametrize("name", step_field_objectives())
@pytest.mark.parametrize("conditioned", [False, True], ids=["KD", "BKD"])
def test_terms_are_finite_scalars_and_only_learned_features_get_gradients(name, conditioned, state_factory, tiny):
    gen = torch.Generator().manual_seed(0)
    frozen_text = torch.randn(K, D, generator=gen)
    shape = (B, K, D) if conditioned else (K, D)
    learned_text = (frozen_text + 0.3 * torch.randn(*shape, generator=gen)).requires_grad_(True)
    images = torch.randn(B, D, generator=gen, requires_grad=True)
    frozen_images = torch.randn(B, D, generator=gen, requires_grad=True)
    frozen_text.requires_grad_(True)
    labels = torch.tensor([0, 1, 1, 4, 5])
    spec = OBJECTIVES.get(name)
    state = declared_only(
        state_factory(learned_text, frozen_text, images, labels, frozen_image_feats=frozen_images), spec.reads, gen
    )
    config = from_dict(spec.config_cls, {})
    clusters = None
    if spec.needs_clusters:
        clusters = config.cluster_settings().select(frozen_text.detach())
        state.clusters = clusters.assignment
    context = ObjectiveContext(frozen_text.detach(), [f"c{i}" for i in range(K)], backbone=tiny, clusters=clusters)
    objective = spec.make(config, context)
    terms = objective.terms(state)
    assert set(terms) == set(spec.default_weights)
    for term, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, term)
    weighted = [spec.default_weights[k] * v for k, v in terms.items() if spec.default_weights[k]]
    # terms that all weigh 0 by default (ProGrad's guide, read only by its gradient transform): check them raw
    sum(weighted or terms.values()).backward(retain_graph=True)
    assert frozen_text.grad is None and frozen_images.grad is None
    assert learned_text.grad is not None and learned_text.grad.abs().sum() > 0
    if objective.transform_gradients is not None:  # it may rewrite gradients, never drop them
        objective.transform_gradients([learned_text], terms)
        assert learned_text.grad is not None and torch.isfinite(learned_text.grad).all()


def test_cluster_settings_default_is_the_auto_rule():
    assert ClusterSettings() == ClusterSettings("auto", 0, 2, None)
