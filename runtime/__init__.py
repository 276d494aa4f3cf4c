"""pcv.runtime: numpy + onnxruntime only (never imports torch)."""

from .api import TextClassifier
from .errors import InputError, ModelError, PcvError, ProviderError
from .readers import ReaderConfig, Record, read_records
from .tokenizer import Encoding, PerceiverByteTokenizer

__all__ = [
    "Encoding",
    "InputError",
    "ModelError",
    "PcvError",
    "PerceiverByteTokenizer",
    "ProviderError",
    "ReaderConfig",
    "Record",
    "TextClassifier",
    "read_records",
]
