"""An open_clip pretrained tag with neither a cached file nor a network fails before any download attempt."""

from __future__ import annotations

import pytest

from tailprompt.backbone import load_backbone, loader
from tailprompt.backbone.checkpoints import BackboneError


def test_offline_without_cache_fails_before_open_clip_retries(monkeypatch):
    import open_clip

    def no_download(*args, **kwargs):
        raise AssertionError("open_clip.create_model was called: it retries downloads for ~55 s offline")

    monkeypatch.setattr(loader, "cached_pretrained_file", lambda pcfg: None)
    monkeypatch.setattr(loader, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(open_clip, "create_model", no_download)
    with pytest.raises(BackboneError, match="ViT-B-32 / openai are not in the Hugging Face cache"):
        load_backbone("ViT-B-32", weights="openai", device="cpu")


def test_a_cached_file_is_loaded_from_disk(monkeypatch, tmp_path):
    import open_clip

    seen = {}

    def fake_create(name, pretrained=None, **kwargs):
        seen["pretrained"] = pretrained
        raise RuntimeError("stop here")

    cached = tmp_path / "open_clip_model.safetensors"
    cached.write_bytes(b"x")
    monkeypatch.setattr(loader, "cached_pretrained_file", lambda pcfg: str(cached))
    monkeypatch.setattr(loader, "hub_reachable", lambda *a, **k: pytest.fail("no network probe when cached"))
    monkeypatch.setattr(open_clip, "create_model", fake_create)
    with pytest.raises(BackboneError):
        load_backbone("ViT-B-32", weights="openai", device="cpu")
    assert seen["pretrained"] == str(cached)
