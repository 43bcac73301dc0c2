"""Data: local sources, formats, tokenisation, batch iterators, and the built-in task."""

from alignax.data import arithmetic, multiobjective
from alignax.data.errors import DataError, ErrorPolicy
from alignax.data.formats import FORMATS, SFT, Pair, Unpaired, detect_format, parse_records
from alignax.data.kinds import as_kind
from alignax.data.loader import BalancedBatchIterator, BatchIterator, PromptIterator
from alignax.data.packing import PackedBatchIterator, packed_iterator, unpack
from alignax.data.sources import read_jsonl, read_parquet, read_records
from alignax.data.tokenize import Limits, collate, default_buckets, render_chat, tokenize_examples

__all__ = [
    "FORMATS", "SFT", "BalancedBatchIterator", "BatchIterator", "DataError", "ErrorPolicy",
    "Limits", "PackedBatchIterator", "Pair", "PromptIterator", "Unpaired", "arithmetic", "as_kind",
    "collate", "default_buckets", "detect_format", "multiobjective", "packed_iterator",
    "parse_records", "read_jsonl", "read_parquet", "read_records", "render_chat",
    "tokenize_examples", "unpack",
]
