"""Where a training command's data and base encoder come from: the config pieces that
`python -m shoprank.training` and `python -m shoprank.training.crossval` share (each stage
config extends them, so every knob is declared once)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoprank import contract


@dataclass
class DataSource:
    """Bring-your-own data (training/loaders.py)."""

    data: str = field(default="", metadata={"help": "bring-your-own data file/folder"})
    data_format: str = field(default="auto", metadata={"help": "format of --data"})
    data_encoding: str = field(
        default="", metadata={"help": "text encoding of --data (e.g. latin-1); default: detected"}
    )


@dataclass
class EncoderSource:
    """The encoder fine-tuning starts from, and how catalog text is embedded."""

    encoder_path: str = field(
        default="", metadata={"help": "HF/ST encoder folder; default: packaged all-MiniLM-L6-v2"}
    )
    tiny_encoder: bool = field(default=False, metadata={"help": "random tiny BERT (tests)"})
    max_product_tokens: int = contract.MAX_PRODUCT_TOKENS
    embed_batch_size: int = 64
