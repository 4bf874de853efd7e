"""The two-source preference set of the sDPO experiment (jobs/README.md, "sDPO by source").

Source `on_policy`: the main job's 86 pairs (data/word_collector_pairs.jsonl), both responses SmolLM2's own samples,
as sampled (token ids). Source `written`: for the same prompts, the task's strong writer's response (a dense,
off-policy style with about 25 of the 30 words) as chosen, against the on-policy pair's rejected sample (its ids as
sampled); the written text was never sampled, so its ids are the tokenizer's encoding with EOS. The paper's chunks
are datasets of different kinds; these two differ in who wrote the chosen response, in its style and in the reward
gap, and each is mixed inside (no sorting by margin).
    python jobs/make_source_pairs.py    # writes jobs/data/word_collector_sources.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rayalign.data.tokenize import encode_responses
from rayalign.models import load_tokenizer
from rayalign.tasks.registry import get_task

HERE = Path(__file__).resolve().parent
SOURCE, TARGET = HERE / "data" / "word_collector_pairs.jsonl", HERE / "data" / "word_collector_sources.jsonl"
SEED = 0


def source_rows(rows: list[dict], tokenizer, task) -> list[dict]:
    rng = random.Random(SEED)
    written = [task.strong_response(row["prompt"], rng) for row in rows]
    out = [dict(row, source="on_policy") for row in rows]
    for row, text, ids in zip(rows, written, encode_responses(written, tokenizer)):
        out.append(dict(row, source="written", chosen=text, chosen_ids=ids, chosen_finish="stop",
                        chosen_score=task.gold_reward(row["prompt"], text), mode="written"))
    return out


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text().splitlines()]
    out = source_rows(rows, load_tokenizer("smollm2-135m-instruct"), get_task("word_collector"))
    TARGET.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in out))
    for source in ("on_policy", "written"):
        mine = [r for r in out if r["source"] == source]
        gap = sum(r["chosen_score"] - r["rejected_score"] for r in mine) / len(mine)
        print(f"{TARGET}: {len(mine)} {source} pairs, mean gold reward gap {gap:.2f}")


if __name__ == "__main__":
    main()
