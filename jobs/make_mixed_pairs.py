"""The mixed-quality preference set of the MPO transfer experiment (jobs/README.md, "MPO: transfer").

From the main job's 86 on-policy pairs (data/word_collector_pairs.jsonl, SmolLM2's token ids as sampled): in a
seeded half of the pairs the chosen response is replaced by a mediocre one, its own first half (the first
⌈n/2⌉ token ids, so it collects fewer of the task's words: the gold reward re-scores the decoded ids); then a
seeded fifth of all pairs has its label flipped. Token ids stay as sampled, cut, never re-tokenised. Columns
`mediocre` and `flipped` say what was done to each row.
    python jobs/make_mixed_pairs.py    # writes jobs/data/word_collector_mixed.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rayalign.models import load_tokenizer
from rayalign.tasks.registry import get_task

HERE = Path(__file__).resolve().parent
SOURCE, TARGET = HERE / "data" / "word_collector_pairs.jsonl", HERE / "data" / "word_collector_mixed.jsonl"
MEDIOCRE, FLIPPED, SEED = 0.5, 0.2, 0


def mixed_rows(rows: list[dict], tokenizer, reward) -> list[dict]:
    rng = random.Random(SEED)
    out = []
    for row in rows:
        row = dict(row, mediocre=rng.random() < MEDIOCRE, flipped=False)
        if row["mediocre"]:
            ids = row["chosen_ids"][: (len(row["chosen_ids"]) + 1) // 2]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            row.update(chosen_ids=ids, chosen=text, chosen_score=reward(row["prompt"], text), chosen_finish="length")
        out.append(row)
    for row in out:
        if rng.random() < FLIPPED:
            row["flipped"] = True
            for key in ("", "_ids", "_score", "_finish"):
                row[f"chosen{key}"], row[f"rejected{key}"] = row[f"rejected{key}"], row[f"chosen{key}"]
    return out


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text().splitlines()]
    out = mixed_rows(rows, load_tokenizer("smollm2-135m-instruct"), get_task("word_collector").gold_reward)
    TARGET.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in out))
    mediocre = [r for r in out if r["mediocre"] and not r["flipped"]]
    print(f"{TARGET}: {len(out)} pairs, {sum(r['mediocre'] for r in out)} with a mediocre chosen response "
          f"(mean gold reward {sum(r['chosen_score'] for r in mediocre) / max(1, len(mediocre)):.2f} where not "
          f"flipped; the originals' {sum(r['chosen_score'] for r in rows) / len(rows):.2f}), "
          f"{sum(r['flipped'] for r in out)} flipped")


if __name__ == "__main__":
    main()
