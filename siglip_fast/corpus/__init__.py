"""Embedding a corpus at scale: `embed_corpus(...)` (what `python -m siglip_fast embed` runs) and
`load_embeddings(path)`.

The unit of work is the input shard (a tar; plain image files, list files and texts files in fixed chunks). Each
stage has its file:

- `job`       the job description (`Job`, validated once, recorded in the manifest), errors, the result, the
              device/dtype choice
- `listing`   naming the units (folders, brace patterns, list files, texts files) and reading one unit's items
              (tar headers)
- `decode`    decoding and resizing in DataLoader workers (reduced-size JPEG decoding), the batches
- `model`     loading the checkpoint, the encoder that runs the towers
- `writer`    the output layout (clip-retrieval's: img_emb/, text_emb/, metadata/, stats/), atomic units, the
              manifest, the lock
- `distribute` torchrun, and units handed out through the torch.distributed store
- `runner`    `embed_corpus`: one job start to end
- `reader`    `load_embeddings`, `ShardedEmbeddings`
- `progress`  the tqdm bar per rank, the summary across ranks
"""

from .decode import DRAFT_MARGIN, decode_loader, open_image
from .job import DEFAULT_SHARD_SIZE, DEFAULT_TEXT_CHUNK_BYTES, CorpusError, CorpusResult, Job, choose_device_dtype
from .listing import Item, Unit, expand_braces, list_units, scan_tar, unit_items
from .model import NaflexNormalizer, load_dual_model, naflex_patches, text_length
from .reader import DamagedOutputError, ShardedEmbeddings, load_embeddings
from .runner import embed_corpus
from .writer import OutputError

__all__ = ["CorpusError", "CorpusResult", "DEFAULT_SHARD_SIZE", "DEFAULT_TEXT_CHUNK_BYTES", "DRAFT_MARGIN",
           "DamagedOutputError", "Item", "Job", "NaflexNormalizer", "OutputError", "ShardedEmbeddings", "Unit",
           "choose_device_dtype", "decode_loader", "embed_corpus", "expand_braces", "list_units", "load_dual_model",
           "load_embeddings", "naflex_patches", "open_image", "scan_tar", "text_length", "unit_items"]
