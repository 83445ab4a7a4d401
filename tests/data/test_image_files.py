"""Opening image files: PIL's warnings and refusals name the file they are about."""

from __future__ import annotations

import pytest
from PIL import Image

from tailprompt.data.files import DatasetError, open_image, open_rgb
from tailprompt.testing.images import decompression_bomb_png


def test_a_very_large_images_warning_names_the_file(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(decompression_bomb_png(side=10_000))  # 1e8 pixels: over PIL's warning limit, under its refusal
    with pytest.warns(Image.DecompressionBombWarning, match=r"huge\.png: Image size \(100000000 pixels\)"):
        open_image(path).close()


def test_a_decompression_bomb_is_an_unreadable_image_naming_the_file(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(decompression_bomb_png())
    with pytest.raises(DatasetError, match=r"bomb\.png: cannot read image \(Image size \(10000000000 pixels\)"):
        open_rgb(path)
