"""Data: local sources, formats, tokenisation, fixed-shape batches, and synthetic tasks."""

from alignax.data import synthetic
from alignax.data.errors import DataError, ErrorPolicy
from alignax.data.formats import FORMATS, SFT, Pair, Unpaired, detect_format, parse_records
from alignax.data.loader import BatchIterator
from alignax.data.sources import read_jsonl, read_parquet, read_records
from alignax.data.tokenize import Limits, collate, default_buckets, render_chat, tokenize_examples

__all__ = [
    "FORMATS", "SFT", "BatchIterator", "DataError", "ErrorPolicy", "Limits", "Pair", "Unpaired",
    "collate", "default_buckets", "detect_format", "parse_records", "read_jsonl", "read_parquet",
    "read_records", "render_chat", "synthetic", "tokenize_examples",
]
