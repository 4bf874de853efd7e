"""The main job's pairs whose prompts are on training topics only (jobs/data/word_collector_pairs_train.jsonl).

The main job sampled jobs/data/word_collector_pairs.jsonl before the word collector had a validation split; 18 of
its 86 prompts are on topics that are now validation topics. A sweep that chooses on validation prompts
(jobs/sweeps/bmc_tune.yaml) trains on this file instead, so no validation topic is trained on.
    python jobs/train_topic_pairs.py    # writes jobs/data/word_collector_pairs_train.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

from rayalign.tasks.registry import get_task
from rayalign.tasks.word_collector import topic_of

HERE = Path(__file__).resolve().parent
SOURCE, TARGET = HERE / "data" / "word_collector_pairs.jsonl", HERE / "data" / "word_collector_pairs_train.jsonl"


def main() -> None:
    task = get_task("word_collector")
    rows = [json.loads(line) for line in SOURCE.read_text().splitlines()]
    kept = [row for row in rows if task.split_of(topic_of(row["prompt"])) == "train"]
    TARGET.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
    print(f"{TARGET}: {len(kept)} of {len(rows)} pairs (the rest are on validation topics)")


if __name__ == "__main__":
    main()
