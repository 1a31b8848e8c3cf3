"""siglip_fast: a fast, faithful SigLIP for PyTorch.

A drop-in for transformers' SigLIP classes (same names, config files, checkpoint keys and outputs) whose hot paths
run as fused Triton kernels, plus a memory-bounded, multi-GPU sigmoid loss for training loops.
"""

from .configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .configuration_siglip2 import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig
from .corpus import embed_corpus, load_embeddings
from .image_processing import BatchFeature, SiglipImageProcessor
from .image_processing_siglip2 import Siglip2ImageProcessor
from .loss import SigmoidLoss, sigmoid_loss
from .modeling import (
    SiglipForImageClassification,
    SiglipModel,
    SiglipPreTrainedModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from .modeling_siglip2 import (
    Siglip2ForImageClassification,
    Siglip2Model,
    Siglip2PreTrainedModel,
    Siglip2TextModel,
    Siglip2VisionModel,
    load_model,
)
from .ops import BACKENDS
from .processing import SiglipProcessor
from .processing_siglip2 import Siglip2Processor, load_processor
from .tokenization import BatchEncoding, SiglipTokenizer
from .tokenization_gemma import GemmaTokenizer, Siglip2Tokenizer
from .variants import VARIANTS, config_for

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BatchEncoding",
    "BatchFeature",
    "GemmaTokenizer",
    "Siglip2Config",
    "Siglip2ForImageClassification",
    "Siglip2ImageProcessor",
    "Siglip2Model",
    "Siglip2PreTrainedModel",
    "Siglip2Processor",
    "Siglip2TextConfig",
    "Siglip2TextModel",
    "Siglip2Tokenizer",
    "Siglip2VisionConfig",
    "Siglip2VisionModel",
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
    "load_model",
    "load_processor",
    "sigmoid_loss",
]
