"""The public model API: lvit.create_model for lvit and timm names."""

import pytest

import lvit
from lvit.models.locality import SELayer


def _se_layers(model):
    return [m for m in model.modules() if isinstance(m, SELayer)]


def test_none_valued_keyword_reaches_lvit_models():
    # timm.create_model would drop attn=None and keep LocalViT-T's default SE.
    tiny = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, se_reduction=4)
    assert _se_layers(lvit.create_model("localvit_tiny", **tiny))
    assert not _se_layers(lvit.create_model("localvit_tiny", attn=None, **tiny))


def test_timm_names_fall_through():
    model = lvit.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    assert type(model).__name__ == "VisionTransformer"


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="localvit_tiny"):
        lvit.create_model("localvit_tinny")
