"""Preference pairs as pipelines write them: what was sampled and scored, as token ids, in parquet.

One row per pair: the texts (for people to read), the token ids that were sampled (prompt,
chosen, rejected: what trains, never re-tokenised), each response's finish reason ("stop" or
"length": a response cut off by the token budget has no EOS), the two scores, and the columns a
pipeline adds (InCo's ratio and prefix length, D2PO's round and label source).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

BASE_COLUMNS = ("prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids", "chosen_finish",
                "rejected_finish", "chosen_score", "rejected_score")


@dataclasses.dataclass
class Candidate:
    """One scored response: its text (for people), the token ids sampled (what trains) and why it ended."""

    text: str
    ids: list[int]
    finish: str
    score: float = 0.0

    @classmethod
    def sampled(cls, completion) -> Candidate:
        return cls(completion.text, list(completion.token_ids), completion.finish_reason)


def pair_row(prompt: str, prompt_ids: list[int], chosen: Candidate, rejected: Candidate, **meta) -> dict:
    """A parquet row: the texts to read, the ids to train on, finish reasons, scores and metadata."""
    return {"prompt": prompt, "chosen": chosen.text, "rejected": rejected.text, "prompt_ids": prompt_ids,
            "chosen_ids": chosen.ids, "rejected_ids": rejected.ids, "chosen_finish": chosen.finish,
            "rejected_finish": rejected.finish, "chosen_score": float(chosen.score),
            "rejected_score": float(rejected.score), **meta}


def pair_schema(extra: dict):
    """The schema, explicit so that an empty file (every prompt tied) concatenates with the rest.
    `extra`: a pipeline's own columns -> pyarrow type."""
    import pyarrow as pa

    ids, number = pa.list_(pa.int64()), pa.float64()
    types = {"prompt_ids": ids, "chosen_ids": ids, "rejected_ids": ids, "chosen_score": number,
             "rejected_score": number}
    return pa.schema([(name, types.get(name, pa.string())) for name in BASE_COLUMNS] + list(extra.items()))


def write_pairs(rows: list[dict], path: Path, extra: dict) -> Path:
    """Write `rows` atomically: the file exists only once it is complete (a rerun takes it as done)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayalign.files import atomic_write

    schema = pair_schema(extra)
    table = pa.table({name: [row[name] for row in rows] for name in schema.names}, schema=schema)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))
