"""Image encoders: the TFLite MobileNet of ../shared/models (ai-edge-litert) and Hugging Face vision
models from a local folder (CLS token or mean-pooled patch tokens, as CLIP and DINOv2 are used)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stitch.errors import UsageError


class ImageEncoder:
    """``encode(list of PIL images) -> (n, d) float32``."""

    spec: str
    dim: int

    def encode(self, images: list) -> np.ndarray:
        raise NotImplementedError


class TFLiteEncoder(ImageEncoder):
    @classmethod
    def from_spec(cls, rest: str, device: str = "cpu") -> TFLiteEncoder:
        """``tflite:PATH`` without its ``tflite:``; TFLite runs on the CPU whatever ``device`` says."""
        return cls(rest)

    def __init__(self, path: str | Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = Path(path)
        if not path.exists():
            raise UsageError(f"TFLite model {path} does not exist")
        self.spec = f"tflite:{path}"
        self.interpreter = Interpreter(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        _, self.height, self.width, _ = self.input["shape"]
        self.dim = int(np.prod(self.output["shape"]))

    def encode(self, images: list) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(images), self.dim), dtype=np.float32)
        scale, zero = self.output["quantization"]
        for i, image in enumerate(images):
            pixels = np.asarray(image.convert("RGB").resize((self.width, self.height), Image.BILINEAR), dtype=np.uint8)
            self.interpreter.set_tensor(self.input["index"], pixels[None])
            self.interpreter.invoke()
            raw = self.interpreter.get_tensor(self.output["index"]).reshape(-1).astype(np.float32)
            out[i] = (raw - zero) * scale if scale else raw
        return out


class HFVisionEncoder(ImageEncoder):
    @classmethod
    def from_spec(cls, rest: str, device: str = "cpu") -> HFVisionEncoder:
        """``hf:PATH[#cls|#mean]`` without its ``hf:``."""
        path, _, pooling = rest.partition("#")
        return cls(path, pooling or "cls", device)

    def __init__(self, path: str | Path, pooling: str = "cls", device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoImageProcessor, AutoModel

        if pooling not in ("cls", "mean"):
            raise UsageError(f"pooling must be cls or mean, got {pooling!r}")
        path = Path(path)
        if not path.exists():
            raise UsageError(f"Hugging Face model folder {path} does not exist")
        self.spec, self.pooling, self.device = f"hf:{path}#{pooling}", pooling, device
        self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model = getattr(model, "vision_model", model).to(device).eval()  # CLIP: keep the vision tower
        self.dim = int(self.model.config.hidden_size)

    def encode(self, images: list) -> np.ndarray:
        import torch

        batch = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(dim=1)
        return pooled.float().cpu().numpy()


def image_encoder(spec: str, device: str = "cpu") -> ImageEncoder:
    """The encoder a spec names (``tflite:PATH``, ``hf:PATH[#cls|#mean]``); kinds live in ``IMAGE_ENCODERS``."""
    from stitch.registries import IMAGE_ENCODERS

    kind, sep, rest = spec.partition(":")
    if not sep or kind not in IMAGE_ENCODERS:
        raise UsageError(f"unknown image encoder {spec!r}; use {IMAGE_ENCODERS.help()}")
    return IMAGE_ENCODERS.get(kind, "image encoder").from_spec(rest, device)
