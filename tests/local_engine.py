"""A real local engine for the tests: a tiny random Llama served by `transformers serve`.

The model and its tokenizer are built here (nothing downloaded): two layers, 32 wide, a
byte-level BPE trained on a few sentences, saved with save_pretrained.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tests.fake_upstream import free_port
from tests.served import ServedProcess

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today?",
    "user assistant system: say hello, count to three",
]
# The engine applies this template; the test applies it too, to count prompt tokens itself.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tiny_llama(directory: Path, hidden_size: int = 32, heads: int = 2) -> Any:
    """Save a 2-layer random Llama and its trained BPE tokenizer in `directory`; the tokenizer.

    vLLM's attention kernels want a head size of 64 or more: scripts/vllm_gpu_check.py asks
    for hidden_size=256, heads=4.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return tokenizer


def transformers_cli() -> str | None:
    """The `transformers` command of this interpreter's environment, if installed."""
    beside = Path(sys.executable).parent / "transformers"
    return str(beside) if beside.exists() else shutil.which("transformers")


class TransformersServe(ServedProcess):
    """`transformers serve MODEL_DIR` on loopback, pinned to that model, on the CPU."""

    what = "transformers serve"
    health_path = "/health"

    def __init__(self, cli: str, model_dir: Path, workdir: Path, ready_s: float = 90) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "transformers-serve.log"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            # /v1/models scans the hub cache: an empty one of its own, not the user's.
            "HF_HUB_CACHE": str(workdir / "hf-cache"),
        }
        (workdir / "hf-cache").mkdir(exist_ok=True)
        command = [cli, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--device", "cpu", "--default-seed", "0"]
        self._spawn(command, env, ready_s)
