"""The model side of the job: loading any SigLIP / SigLIP 2 dual encoder with its processor, the sizes it embeds at,
and the encoder that runs the towers on decoded batches (on CUDA through CUDA-graph runners, each result collected
one batch late so the device-to-host copy overlaps the next batch)."""

from __future__ import annotations

import hashlib
import os

import torch

from .job import CorpusError

PROCESSOR_FILES = ("spiece.model (SigLIP) or tokenizer.model (SigLIP 2), tokenizer_config.json, processor_config.json "
                   "or preprocessor_config.json")


def load_dual_model(model_path: str, device, dtype, backend):
    """(model, processor) of any SigLIP / SigLIP 2 checkpoint directory or hub id, through `load_model` and
    `load_processor`: a `SiglipModel` (SigLIP, fixed-resolution SigLIP 2) or a `Siglip2Model` (NaFlex), and its
    `SiglipProcessor` / `Siglip2Processor`. CorpusError when either is unusable or the model is not a dual encoder."""
    from .. import ops
    from ..modeling import SiglipModel
    from ..modeling_siglip2 import load_model
    from ..processing_siglip2 import load_processor

    try:
        ops.resolve(backend, torch.empty(0, device=device))
    except ValueError as e:
        raise CorpusError(f"--backend {backend}: {e}") from None
    try:
        model = load_model(model_path, dtype=dtype, device=device, backend=backend).eval()
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        raise CorpusError(f"--model {model_path}: {e}") from None
    if not isinstance(model, SiglipModel):
        raise CorpusError(f"--model {model_path}: a {type(model).__name__} checkpoint; this needs both towers (a "
                          f"SiglipModel or Siglip2Model checkpoint, model_type 'siglip' or 'siglip2')")
    try:
        processor = load_processor(model_path)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        raise CorpusError(f"--model {model_path}: no usable processor files ({PROCESSOR_FILES}): {e}") from None
    return model, processor


def naflex_patches(model, processor, max_num_patches: int | None) -> int | None:
    """The max_num_patches images are padded to for a NaFlex model (`max_num_patches`, default the image processor's
    setting); None for a fixed-resolution model, where giving `max_num_patches` is a CorpusError."""
    from ..image_processing_siglip2 import Siglip2ImageProcessor
    from ..modeling_siglip2 import Siglip2Model

    if max_num_patches is not None and (isinstance(max_num_patches, bool) or not isinstance(max_num_patches, int)
                                        or max_num_patches < 1):
        raise CorpusError(f"--max-num-patches must be an int >= 1, got {max_num_patches!r}")
    naflex_model = isinstance(model, Siglip2Model)
    naflex_images = isinstance(processor.image_processor, Siglip2ImageProcessor)
    if naflex_model != naflex_images:
        raise CorpusError(f"the checkpoint pairs a {type(model).__name__} with a "
                          f"{type(processor.image_processor).__name__}: NaFlex models (Siglip2Model) need the NaFlex "
                          f"image processor (Siglip2ImageProcessor) and fixed-resolution ones a SiglipImageProcessor")
    if not naflex_model:
        if max_num_patches is not None:
            raise CorpusError("--max-num-patches applies to NaFlex SigLIP 2 checkpoints (model_type 'siglip2') "
                              "only; this one has a fixed image size")
        return None
    return processor.image_processor.max_num_patches if max_num_patches is None else max_num_patches


def text_length(processor, model) -> int:
    """Tokens per text: SigLIP's training setting, padded to max_length with truncation, max_length the tokenizer's
    model_max_length for SigLIP and 64 for SigLIP 2 (the `Siglip2Processor` default), both at most the model's
    max_position_embeddings."""
    from ..processing_siglip2 import TEXT_DEFAULTS, Siglip2Processor

    limit = model.config.text_config.max_position_embeddings
    if isinstance(processor, Siglip2Processor):
        return min(TEXT_DEFAULTS["max_length"], limit)
    return min(processor.tokenizer.model_max_length, limit)



class NaflexNormalizer:
    """Finishes the workers' uint8 NaFlex patches on the model's device: rescale + normalise through the image
    processor's own (3, 256) float32 lookup table (the values its float path computes for every uint8, so the result
    is bitwise its `pixel_values`), padding patches zero. The workers send a quarter of the bytes and skip the
    float work, the largest part of their time at 1024 patches."""

    def __init__(self, image_processor, device):
        ip = image_processor
        table = ip._lookup_table(ip.rescale_factor, ip.image_mean, ip.image_std, ip.do_rescale, ip.do_normalize)
        self.table = torch.from_numpy(table.reshape(-1)).to(device)  # (3 * 256,): channel c's values at c * 256
        dim = 3 * ip.patch_size**2
        self.offsets = (torch.arange(dim, device=device, dtype=torch.int32) % 3) * 256  # (p, p, C) flattening

    def __call__(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """uint8 (B, N, p·p·3), mask (B, N) -> float32 (B, N, p·p·3)."""
        values = self.table[patches.to(torch.int32) + self.offsets]
        return torch.where(mask.bool()[..., None], values, 0.0)


class Encoder:
    """Runs the towers on batches from the loader; on CUDA through CUDA-graph runners, results collected one batch
    late so the device-to-host copy overlaps the next batch."""

    def __init__(self, model, processor, device, dtype, batch_size: int, cuda_graph: bool,
                 max_num_patches: int | None = None):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.batch_size, self.cuda_graph = batch_size, cuda_graph
        self.max_num_patches = max_num_patches  # set for a NaFlex model
        self.naflex = None if max_num_patches is None else NaflexNormalizer(processor.image_processor, device)
        self.text_length = text_length(processor, model)
        self._vision = self._text = None

    def _features(self, batch) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        if batch["kind"] == "image":
            if self.max_num_patches is not None:  # NaFlex: pixel_values, pixel_attention_mask and spatial_shapes
                mask = batch["pixel_attention_mask"].to(self.device, non_blocking=cuda)
                inputs = {"pixel_values": self.naflex(batch["pixels"].to(self.device, non_blocking=cuda),
                                                      mask).to(self.dtype),
                          "pixel_attention_mask": mask,
                          "spatial_shapes": batch["spatial_shapes"].to(self.device, non_blocking=cuda)}
                if self.cuda_graph:
                    if self._vision is None:
                        self._vision = self.model.vision_model.compile_for_inference(
                            self.batch_size, max_num_patches=self.max_num_patches)
                    return self._vision(**inputs).pooler_output
                return self.model.get_image_features(**inputs).pooler_output
            x = batch["pixels"].to(self.device, non_blocking=cuda)
            x = x if x.dtype == torch.uint8 else x.to(self.dtype)
            if self.cuda_graph:
                if self._vision is None:
                    self._vision = self.model.vision_model.compile_for_inference(
                        self.batch_size, image_size=tuple(x.shape[2:]), pixel_dtype=x.dtype)
                return self._vision(pixel_values=x).pooler_output
            return self.model.get_image_features(pixel_values=x).pooler_output
        enc = self.processor.tokenizer(batch["texts"], padding="max_length", truncation=True,
                                       max_length=self.text_length, return_tensors="pt")
        enc = {k: v.to(self.device, non_blocking=cuda) for k, v in enc.items()}
        if self.cuda_graph:
            if self._text is None:
                self._text = self.model.text_model.compile_for_inference(
                    self.batch_size, seq_len=self.text_length, with_attention_mask="attention_mask" in enc)
            return self._text(**enc).pooler_output
        return self.model.get_text_features(**enc).pooler_output

    def launch(self, batch):
        """-> (host float32 tensor (n, D), event or None); the copy may still be in flight until event syncs."""
        with torch.inference_mode():
            emb = torch.nn.functional.normalize(self._features(batch).float(), dim=-1)
            if self.device.type != "cuda":
                return emb, None
            host = torch.empty(emb.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(emb, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return host, event



def fingerprint_model(path: str) -> str:
    """A checkpoint directory's identity: its config and processor files in full, each weight file's name, size
    and first and last MiB (a retrained checkpoint of the same shape differs there). A hub id: the id itself."""
    h = hashlib.sha256()
    if not os.path.isdir(path):
        h.update(f"id:{path}".encode())
        return h.hexdigest()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        size = os.path.getsize(full)
        h.update(f"{name}\0{size}\n".encode())
        with open(full, "rb") as f:
            if name.endswith((".json", ".model", ".txt")) or size <= 2 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
    return h.hexdigest()
