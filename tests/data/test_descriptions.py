"""Reading CoPrompt-format description files, and their frozen features as the reference encodes them."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tailprompt.backbone import load_backbone
from tailprompt.cli import UserError, user_errors
from tailprompt.data.descriptions import class_descriptions, descriptions_file, read_descriptions
from tailprompt.data.types import DatasetSplits
from tailprompt.engine.run import description_features
from tailprompt.schema import ConfigError

CLASSNAMES = ["Annual_Crop_Land", "Forest", "sea or lake"]
GOOD = {
    "Annual Crop Land": ["rows of crops seen from above.", "a patchwork of fields."],
    "Forest": ["dense green tree canopy.", "a dark green texture of trees."],
    "sea or lake": ["a flat blue water surface.", "dark_water with no texture."],  # `_` kept, as the reference
}


def write(tmp_path, payload, name="eurosat_prompt.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


def test_sentences_come_back_in_class_order_with_underscores_as_spaces(tmp_path):
    rows = class_descriptions(read_descriptions(write(tmp_path, GOOD)), CLASSNAMES, "f")
    assert rows == [GOOD["Annual Crop Land"], GOOD["Forest"], GOOD["sea or lake"]]
    raw = {"Annual_Crop_Land": ["raw key."], "Forest": ["f."], "sea or lake": "one string is one sentence."}
    rows = class_descriptions(read_descriptions(write(tmp_path, raw)), CLASSNAMES, "f")
    assert rows == [["raw key."], ["f."], ["one string is one sentence."]]


def test_missing_classes_are_counted_and_named(tmp_path):
    by_class = read_descriptions(write(tmp_path, {"Forest": GOOD["Forest"]}))
    expected = r"f.json: no descriptions for classes 'Annual Crop Land', 'sea or lake' \(2 of 3;"
    with pytest.raises(ConfigError, match=expected) as e:
        class_descriptions(by_class, CLASSNAMES, "f.json")
    assert "\n" not in str(e.value)


def test_malformed_json_names_the_file_and_position(tmp_path):
    path = write(tmp_path, '{"Forest": ["trees",]}')
    expected = r"data.descriptions: .*eurosat_prompt.json: not valid JSON \(.* line 1, column"
    with pytest.raises(ConfigError, match=expected):
        read_descriptions(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([["a"]], "expected a JSON object"),
        ({"Forest": 3}, "class 'Forest': expected a non-empty list"),
        ({"Forest": []}, "class 'Forest': expected a non-empty list"),
        ({"Forest": ["ok", 3]}, "class 'Forest': expected a non-empty list"),
        ({"Forest": ["ok", "  "]}, "class 'Forest': expected a non-empty list"),
    ],
)
def test_wrong_shapes_are_rejected(tmp_path, payload, message):
    with pytest.raises(ConfigError, match=message):
        read_descriptions(write(tmp_path, payload))


def test_missing_file_is_one_user_error_line(tmp_path):
    with pytest.raises(UserError, match="data.descriptions: .*nope.json: descriptions file not found"), user_errors():
        read_descriptions(tmp_path / "nope.json")


def test_a_pipe_is_refused_without_reading_it(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")  # reading a FIFO without a writer would block forever
    with pytest.raises(ConfigError, match="pipe.json: cannot read descriptions file .not a regular file"):
        read_descriptions(tmp_path / "pipe.json")


def test_a_gpt_file_folder_whose_dataset_entry_is_a_folder_says_so(tmp_path):
    (tmp_path / "gpt_file" / "eurosat_prompt.json").mkdir(parents=True)
    with pytest.raises(ConfigError, match="eurosat_prompt.json: is a folder, expected a descriptions file"):
        read_descriptions(descriptions_file(tmp_path / "gpt_file", "eurosat"))


def test_a_gpt_file_folder_gives_each_dataset_its_file(tmp_path):
    folder = tmp_path / "gpt_file"
    folder.mkdir()
    for stem in ("eurosat", "fgvc"):
        write(folder, GOOD, f"{stem}_prompt.json")
    assert descriptions_file(folder, "eurosat") == folder / "eurosat_prompt.json"
    assert descriptions_file(folder, "fgvc_aircraft") == folder / "fgvc_prompt.json"  # CoPrompt's file stem
    assert descriptions_file(folder / "eurosat_prompt.json", "dtd") == folder / "eurosat_prompt.json"  # a file wins
    with pytest.raises(ConfigError, match=r"gpt_file is a folder without dtd_prompt.json for dataset 'dtd'"):
        descriptions_file(folder, "dtd")


# ----- the frozen teacher features the engine builds from them -----


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-vit")


def splits(descriptions=None) -> DatasetSplits:
    return DatasetSplits("eurosat", list(CLASSNAMES), "{}", [], [], [], None, lambda it: None, lambda it: "",
                         descriptions=descriptions)


def reference_sentence_feature(backbone, sentence):
    """CoPrompt's `gpt_clip_classifier`: plain `encode_text` of the sentence (full context), divided by its norm."""
    with torch.no_grad():
        f = backbone.encode_text(backbone.tokenize([sentence]), truncate=False)[0].float()
    return f / f.norm()


def test_features_are_per_sentence_normalised_and_stacked_by_index(backbone, tmp_path):
    feats = description_features(backbone, splits(), str(write(tmp_path, GOOD)))
    rows = [GOOD["Annual Crop Land"], GOOD["Forest"], GOOD["sea or lake"]]
    assert feats.shape == (2, 3, backbone.embed_dim)
    for k, sentences in enumerate(rows):
        for i, sentence in enumerate(sentences):
            torch.testing.assert_close(feats[i, k], reference_sentence_feature(backbone, sentence), atol=1e-6, rtol=0)
    assert not torch.allclose(feats[0], feats[1])  # one index per step, not an average


def test_a_dataset_without_descriptions_and_no_file_is_refused(backbone, tmp_path):
    with pytest.raises(ConfigError, match=r"data.descriptions: .*none were given and dataset 'eurosat' has none"):
        description_features(backbone, splits(), None)
    own = description_features(backbone, splits(GOOD), None)  # a reader that ships its own sentences
    torch.testing.assert_close(own, description_features(backbone, splits(), str(write(tmp_path, GOOD))))
    with pytest.raises(ConfigError, match=r"no descriptions for classes 'Forest' \(1 of 3"):
        description_features(backbone, splits(), str(write(tmp_path, {k: v for k, v in GOOD.items() if k != "Forest"})))


def test_a_sentence_longer_than_the_context_is_a_user_error(backbone, tmp_path):
    long = {k: [" ".join(["word"] * 200)] for k in GOOD}
    with pytest.raises(UserError, match=r"data.descriptions: .*eurosat_prompt.json: prompt .* tokens"), user_errors():
        description_features(backbone, splits(), str(write(tmp_path, long)))
