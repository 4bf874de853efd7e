"""Preference data: read files or datasets, normalise the common forms, tokenise, batch.

``prepare_data(cfg.data, tokenizer)`` is the entry point; ``collate_pairs`` makes batches.
Imports only torch and the tokenizer's library (no Ray, no wandb), so workers load it cheaply.
"""

from rayalign.data.bad_rows import BadRow
from rayalign.data.collate import collate_pairs
from rayalign.data.formats import FORMS, PreferenceExample, normalise
from rayalign.data.prepare import PreparedData, attach_marks, fingerprint, prepare_data
from rayalign.data.readers import iter_rows
from rayalign.data.tokenize import TokenizedPair, encode_prompt, encode_response, tokenize_examples

__all__ = [
    "FORMS", "BadRow", "PreferenceExample", "PreparedData", "TokenizedPair", "attach_marks", "collate_pairs",
    "encode_prompt", "encode_response", "fingerprint", "iter_rows", "normalise", "prepare_data",
    "tokenize_examples",
]
