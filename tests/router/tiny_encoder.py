"""A tiny sentence-transformers model made by the tests: a 2-layer BERT with random weights
and a WordPiece tokenizer trained on a few sentences (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "Prove that the sum of the first n odd numbers is n squared, step by step.",
    "Translate the word river to French.",
    "Write a Python function that parses arithmetic expressions.",
    "What is the capital of Australia?",
    "Explain why the sky is blue and how light scatters.",
]


def write_tiny_sentence_model(directory: Path) -> Path:
    """Save the model under directory and return its path."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_CORPUS * 4, WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
    hf_dir = directory / "hf"
    BertTokenizerFast(
        tokenizer_object=tok,
        **{
            "unk_token": "[UNK]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
    ).save_pretrained(hf_dir)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(hf_dir)
    body = Transformer(str(hf_dir), max_seq_length=64)
    pooling = Pooling(config.hidden_size, pooling_mode="mean")
    out = directory / "tiny-sentence-model"
    SentenceTransformer(modules=[body, pooling], device="cpu").save(str(out))
    return out
