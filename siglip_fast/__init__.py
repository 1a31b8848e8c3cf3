"""siglip_fast: a fast, faithful SigLIP for PyTorch.

A drop-in for transformers' SigLIP classes (same names, config files, checkpoint keys and outputs) whose hot paths
run as fused Triton kernels, plus a memory-bounded, multi-GPU sigmoid loss for training loops.
"""

from .configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .corpus import embed_corpus, load_embeddings
from .image_processing import BatchFeature, SiglipImageProcessor
from .loss import SigmoidLoss, sigmoid_loss
from .modeling import (
    SiglipForImageClassification,
    SiglipModel,
    SiglipPreTrainedModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from .ops import BACKENDS
from .processing import SiglipProcessor
from .tokenization import BatchEncoding, SiglipTokenizer
from .variants import VARIANTS, config_for

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BatchEncoding",
    "BatchFeature",
    "SiglipConfig",
    "SiglipForImageClassification",
    "SiglipImageProcessor",
    "SigmoidLoss",
    "SiglipModel",
    "SiglipPreTrainedModel",
    "SiglipProcessor",
    "SiglipTextConfig",
    "SiglipTextModel",
    "SiglipTokenizer",
    "SiglipVisionConfig",
    "SiglipVisionModel",
    "VARIANTS",
    "config_for",
    "embed_corpus",
    "load_embeddings",
    "sigmoid_loss",
]
