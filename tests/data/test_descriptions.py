"""Reading CoPrompt-format description files and encoding them as the reference does."""

from __future__ import annotations

import json

import pytest
import torch

from tailprompt.backbone import load_backbone
from tailprompt.cli import UserError, user_errors
from tailprompt.data.descriptions import (
    DescriptionError,
    class_descriptions,
    description_features,
    load_descriptions_file,
    read_class_descriptions,
)

CLASSNAMES = ["Annual_Crop_Land", "Forest", "sea or lake"]
GOOD = {
    "Annual Crop Land": ["rows of crops seen from above.", "a patchwork of fields."],
    "Forest": ["dense green tree canopy.", "a dark green texture of trees."],
    "sea or lake": ["a flat blue water surface.", "dark water with no texture."],
}


def write(tmp_path, payload, name="eurosat_prompt.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


def test_sentences_come_back_in_class_order_with_underscores_as_spaces(tmp_path):
    path = write(tmp_path, GOOD)
    rows = read_class_descriptions(path, CLASSNAMES)
    assert rows == [GOOD["Annual Crop Land"], GOOD["Forest"], GOOD["sea or lake"]]
    # the raw name is a valid key as well
    raw = {"Annual_Crop_Land": GOOD["Annual Crop Land"], **{k: v for k, v in GOOD.items() if k != "Annual Crop Land"}}
    assert class_descriptions(raw, CLASSNAMES, "x.json")[0] == GOOD["Annual Crop Land"]


def test_missing_classes_are_all_named(tmp_path):
    path = write(tmp_path, {"Forest": GOOD["Forest"]})
    expected = r"no descriptions for 2 of 3 classes: 'Annual Crop Land', 'sea or lake'"
    with pytest.raises(DescriptionError, match=expected) as e:
        read_class_descriptions(path, CLASSNAMES)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_malformed_json_names_the_file_and_position(tmp_path):
    path = write(tmp_path, '{"Forest": ["trees",]}')
    with pytest.raises(DescriptionError, match=r"eurosat_prompt.json: not valid JSON \(.* line 1, column \d+\)"):
        load_descriptions_file(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([["a"]], "expected a JSON object"),
        ({"Forest": "trees"}, "class 'Forest' must map to a non-empty list"),
        ({"Forest": []}, "class 'Forest' must map to a non-empty list"),
        ({"Forest": ["ok", 3]}, "class 'Forest' must map to a non-empty list"),
        ({"Forest": ["ok", "  "]}, "class 'Forest' must map to a non-empty list"),
    ],
)
def test_wrong_shapes_are_rejected(tmp_path, payload, message):
    with pytest.raises(DescriptionError, match=message):
        load_descriptions_file(write(tmp_path, payload))


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data.descriptions: .*nope.json: file not found"), user_errors():
        load_descriptions_file(tmp_path / "nope.json")


def test_unequal_sentence_counts_are_rejected_with_the_counts(tmp_path):
    uneven = dict(GOOD, Forest=["one sentence only."])
    with pytest.raises(DescriptionError, match=r"same number of sentences.*1: 'Forest'; 2: 'Annual Crop Land'"):
        class_descriptions(uneven, CLASSNAMES, "f.json")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-vit")


def test_features_are_per_sentence_normalised_and_stacked_by_index(backbone):
    rows = [GOOD[k] for k in ("Annual Crop Land", "Forest", "sea or lake")]
    feats = description_features(backbone, rows)
    assert feats.shape == (2, 3, backbone.embed_dim) and feats.dtype == torch.float32
    for k, sentences in enumerate(rows):
        for i, sentence in enumerate(sentences):
            with torch.no_grad():
                ref = backbone.encode_text(backbone.tokenize([sentence]), truncate=False)[0].float()
            torch.testing.assert_close(feats[i, k], ref / ref.norm(), atol=1e-6, rtol=0)
    # stacked, not averaged: the two indices differ
    assert not torch.allclose(feats[0], feats[1])


def test_a_sentence_longer_than_the_context_names_the_file(backbone):
    long = " ".join(["word"] * 200)
    with pytest.raises(DescriptionError, match=r"data.descriptions: d.json: .*tokens"):
        description_features(backbone, [[long]], "d.json")
