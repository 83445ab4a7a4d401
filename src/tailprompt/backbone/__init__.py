"""The frozen vision-language backbone: checkpoints in, a `FrozenVLM` out.

    from tailprompt.backbone import load_backbone
    vlm = load_backbone("ViT-B-16", weights="ViT-B-16.safetensors")   # or "tiny-vit", "embedded", "embedded-vit"
    feats = vlm.encode_text(vlm.tokenize(["a photo of a cat."]))       # [1, 512]

Importing this package is cheap: open_clip and torchvision load on first use.
"""

from tailprompt.backbone.checkpoints import BackboneError
from tailprompt.backbone.frozen import FrozenVLM
from tailprompt.backbone.loader import load_backbone, parse_quick_gelu

__all__ = ["BackboneError", "FrozenVLM", "load_backbone", "parse_quick_gelu"]
