"""ONNX Runtime (int8 dynamic quantisation) of the sentence model; needs onnxruntime + tokenizers.

The quantised model is exported once from the packaged weights into a local cache (torch is
needed for that export only), because at ~23 MB it does not fit the committed artifact.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from router.encoders.base import clip_texts, l2_normalise
from router.encoders.sentence_transformer import resolve_model_path

MODEL_FILE = "model_int8.onnx"


def onnx_cache_dir(model: str) -> Path:
    """Where the exported model lives: $RIGHTSIZE_CACHE_DIR or ~/.cache/rightsize, per model."""
    root = Path(os.environ.get("RIGHTSIZE_CACHE_DIR", Path.home() / ".cache" / "rightsize"))
    return root / "onnx" / re.sub(r"[^A-Za-z0-9_.-]+", "_", model)


def export_int8(model: str, target: Path) -> Path:
    """Export the transformer with mean pooling to ONNX and quantise weights to int8."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    source = resolve_model_path(model)
    target.mkdir(parents=True, exist_ok=True)
    bert = AutoModel.from_pretrained(source).eval()

    class _MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            )[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    dummy = torch.ones((2, 8), dtype=torch.long)
    fp32 = target / "model_fp32.onnx"
    axes = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "token_type_ids": {0: "batch", 1: "seq"},
    }
    torch.onnx.export(
        _MeanPooled(),
        (dummy, dummy, torch.zeros_like(dummy)),
        str(fp32),
        dynamo=False,
        input_names=list(axes),
        output_names=["embedding"],
        dynamic_axes={**axes, "embedding": {0: "batch"}},
        opset_version=17,
    )
    quantize_dynamic(str(fp32), str(target / MODEL_FILE), weight_type=QuantType.QInt8)
    fp32.unlink()
    (target / "tokenizer.json").write_bytes((Path(source) / "tokenizer.json").read_bytes())
    return target / MODEL_FILE


class OnnxEncoder:
    """int8 ONNX Runtime session with mean pooling inside the graph."""

    def __init__(
        self,
        model_dir: Path,
        max_seq_length: int = 256,
        threads: int | None = None,
        batch_size: int = 64,
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=max_seq_length)
        self._tokenizer.enable_padding()
        self.batch_size = batch_size
        self.name = f"onnx-int8:{model_dir.name}"
        self.dim = int(self._session.get_outputs()[0].shape[1] or 384)

    @classmethod
    def for_model(cls, model: str, max_seq_length: int = 256) -> OnnxEncoder:
        """Open the cached export of `model`, exporting it first if absent."""
        directory = onnx_cache_dir(model)
        if not (directory / MODEL_FILE).exists():
            export_int8(model, directory)
        return cls(directory, max_seq_length)

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Return L2-normalised embeddings, run in length-sorted chunks to bound memory."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        clipped = clip_texts(texts)
        order = sorted(range(len(texts)), key=lambda i: len(clipped[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._run([clipped[i] for i in idx])
        return l2_normalise(out)

    def _run(self, texts: list[str]) -> npt.NDArray[np.float32]:
        encodings = self._tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
