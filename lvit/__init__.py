"""lvit: a reproducibility suite for LocalViT (Li et al.) and DPT (Ranftl et al.).

``import lvit`` registers every lvit model with timm.
"""

from lvit.depth import predict_depth
from lvit.models import create_model, lvit_model_names
from lvit.models.convert import load_pretrained

__version__ = "0.2.0"

__all__ = ["__version__", "create_model", "load_pretrained", "lvit_model_names", "predict_depth"]
