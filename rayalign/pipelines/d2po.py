"""D2PO (arXiv 2405.01511): online DPO where a discriminator silver-labels what a small gold budget cannot.

Each round r:

1. the `SamplerPool` (Ray actors holding the current policy) samples 2 responses to each of the
   round's `d2po.prompts_per_round` training prompts (`sampling.temperature`, 1 in the job);
2. the discriminator, served on Ray Serve, scores every response (the deployment handle here;
   `POST /discriminator/score` over HTTP for anyone else);
3. in each window of `d2po.window` pairs, up to `d2po.relabels` pairs go to the gold labeller: the
   smallest score gap (`conf`) or random ones (`rand`), while the hard budget `d2po.gold_budget`
   lasts. Every gold call is logged with its round (`gold_calls.jsonl`); a gold tie is dropped
   (its label is still spent);
4. the discriminator's accuracy on the new gold pairs is measured *before* it trains on them; then
   it trains on them (Bradley-Terry, `d2po.disc_epochs`) inside its Serve replica (its CPUs or GPU,
   `d2po.disc_cpus` / `d2po.disc_gpus`), which then serves the new weights (no new replica, no
   request dropped);
5. the updated discriminator labels every pair, gold labels override; DPO trains on them in the
   run's one trainer (`rayalign.train.online`: built once, the starting model as the frozen reference);
6. the new weights reach every sampler actor over a collective from the trainer
   (`rayalign.sampling.weight_sync`: no file, no driver or object-store copy).

Baselines by one switch, `d2po.mode`: `gold_only` trains on the gold-labelled pairs alone (the same
budget and schedule, no discriminator); `frozen` spends the budget as early as it can on random
pairs, trains the discriminator on them and then never again (a static reward model).

Choices the paper leaves open, and ours: the discriminator starts from an untrained scalar head on
its backbone (or from `d2po.discriminator`, a saved one), or, as the authors start from a trained reward
model, from a head fitted on `d2po.disc_warm_start` gold-labelled pairs outside the budget (`warm_start`);
it learns each round by Bradley-Terry epochs on the new gold pairs with a fresh AdamW (`finetune`) or by
refitting its head on every gold pair so far (`d2po.disc_training: head`). Each round's DPO starts a
fresh AdamW too (constant LR in the job), from the previous round's policy, and ends with the policy's
checkpoint, which makes the round the unit of resuming; the pairs its steps do not use (beyond the last
full batch, or all of a round with less than a batch) carry into the next one, and `d2po.steps_per_round`
fixes the steps each round owes, so that modes train equally long (`plan_round`). The round's samples are
also scored with the task's gold reward as a *metric* (the policy's gold reward per round, and the silver
labels' accuracy against it on every pair): that never labels a pair and never counts against the budget.

State: after every round, `d2po_state.json` (written last, atomically) records the rounds done, the
policy and discriminator checkpoints, the gold labels used and the pairs carried over. A stopped run
restarts at the next round from exactly that state; a round interrupted half-way is redone whole
(its gold calls are dropped from the log first, so the budget is never exceeded).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from rayalign import config as config_lib
from rayalign.errors import ConfigError
from rayalign.files import atomic_write_text, read_jsonl, truncate_jsonl
from rayalign.storage import is_uri

if TYPE_CHECKING:
    from rayalign.pipelines.run import Run
    from rayalign.summary import TrainSummary

STATE_FILE, GOLD_LOG, GOLD_PAIRS = "d2po_state.json", "gold_calls.jsonl", "gold_pairs.jsonl"
WARM_PAIRS = "warm_start_pairs.jsonl"


def select_for_gold(gaps: list[float], window: int, relabels: int, strategy: str, budget: int,
                    rng: random.Random) -> list[int]:
    """Pair indices for the gold labeller: per window of `window` pairs, up to `relabels` with the smallest
    discriminator gap (conf, ties by index) or at random (rand); at most `budget` in all, earlier windows first."""
    chosen: list[int] = []
    for start in range(0, len(gaps), window):
        indices = list(range(start, min(start + window, len(gaps))))
        if strategy == "conf":
            indices.sort(key=lambda i: (gaps[i], i))
        else:
            rng.shuffle(indices)
        chosen += indices[:min(relabels, budget - len(chosen))]
    return chosen


def preferred(a: float, b: float, min_gap: float = 0.0) -> int | None:
    """Which of two samples a score or reward prefers: 0 (a), 1 (b), None when they differ by `min_gap` or less."""
    return None if abs(a - b) <= min_gap else int(b > a)


def silver_labels(scores: list[tuple[float, float]], gold: dict[int, int | None],
                  min_gap: float = 0.0) -> list[int | None]:
    """Per pair, which sample is chosen (0 or 1): the gold label where there is one, else the higher score when the
    scores differ by more than `min_gap`; None for no preference (a gold tie, or scores too close to call)."""
    return [gold[i] if i in gold else preferred(a, b, min_gap) for i, (a, b) in enumerate(scores)]


def silver_accuracy(labels: list[int | None], gold: dict[int, int | None],
                    rewards: list[tuple[float, float]]) -> dict:
    """How the silver labels (pairs without a gold label) agree with the task's gold reward, which a round computes
    anyway as a metric and which never labels a pair: accuracy where the gold rewards differ, and the share of silver
    labels on pairs the gold reward ties (they train as a preference it does not have)."""
    silver = [i for i, label in enumerate(labels) if label is not None and i not in gold]
    decided = [i for i in silver if preferred(*rewards[i]) is not None]
    right = sum(labels[i] == preferred(*rewards[i]) for i in decided)
    return {"silver/labels": len(silver), "silver/accuracy": right / len(decided) if decided else None,
            "silver/gold_tie_share": (len(silver) - len(decided)) / len(silver) if silver else None}


def plan_round(cfg: config_lib.Config, pairs: int, owed: int) -> tuple[int, list[int], int]:
    """(DPO steps a round takes, the indices of the pairs they use, steps still owed after it) with `pairs` pairs
    (carried ones first) and `owed` steps from earlier rounds. A round owes d2po.steps_per_round; with fewer pairs
    than a batch it takes none and owes them on (without steps_per_round: one train.epochs pass). The pairs no step
    uses carry to the next round, so no label is ever dropped."""
    from rayalign.train.loop import total_steps, used_pairs

    due = owed + (cfg.d2po.steps_per_round or 0)
    if pairs < cfg.train.batch_size:
        return 0, [], due
    steps = due or total_steps(cfg, pairs)
    used = used_pairs(cfg, pairs, steps)
    return steps, list(range(pairs)) if used is None else used, 0


class GoldLabeller:
    """The gold labeller behind a hard budget: the task's gold reward or an LLM judge. Every call is logged."""

    def __init__(self, cfg: config_lib.D2POConfig, task, used: int, log: Path):
        if cfg.labeller not in ("gold", "judge"):
            raise ConfigError(f"d2po.labeller '{cfg.labeller}' is not gold or judge")
        self.task, self.budget, self.used, self.log, self.kind = task, cfg.gold_budget, used, log, cfg.labeller
        self._judge = None

    @property
    def left(self) -> int:
        return self.budget - self.used

    def label(self, round_index: int, pair_index: int, prompt: str, a: str, b: str) -> int | None:
        """0 if `a` is better, 1 if `b`, None for a tie; spends one label (an error past the budget)."""
        if self.used >= self.budget:
            raise RuntimeError("gold budget exhausted: select_for_gold must never ask for more (a bug)")
        self.used += 1
        if self.kind == "gold":
            values = (self.task.gold_reward(prompt, a), self.task.gold_reward(prompt, b))
            label = preferred(*values)
        else:
            values, label = None, self._ask_judge(prompt, a, b)
        entry = {"round": round_index, "pair": pair_index, "labeller": self.kind, "gold": values, "label": label,
                 "used": self.used}
        with open(self.log, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        return label

    def _ask_judge(self, prompt: str, a: str, b: str) -> int | None:
        from rayalign.llm_client import LLMClient

        self._judge = self._judge or LLMClient()
        question = (f"Which response answers the request better?\n\nRequest: {prompt}\n\nResponse A: {a}\n\n"
                    f"Response B: {b}\n\nAnswer with the single letter A or B.")
        answer = self._judge.chat([{"role": "user", "content": question}], max_tokens=4, temperature=0).strip()
        return {"A": 0, "B": 1}.get(answer[:1].upper())  # anything else counts as no preference


@dataclasses.dataclass
class State:
    rounds_done: int
    policy: str
    discriminator: str | None
    gold_used: int
    carry: list[dict]
    owed_steps: int = 0  # d2po.steps_per_round of rounds that had less than a batch to train on

    def save(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / STATE_FILE, json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, run_dir: Path, cfg: config_lib.Config) -> State:
        path = run_dir / STATE_FILE
        if path.is_file():
            return cls(**json.loads(path.read_text()))
        return cls(0, cfg.model.name, None, 0, [])


def _initial_discriminator(cfg: config_lib.Config, run_dir: Path) -> str | None:
    """Save the starting discriminator (a backbone with an untrained head, or a saved one) as round 0's."""
    if cfg.d2po.mode == "gold_only":
        return None
    from rayalign.scoring.discriminator import Discriminator

    d = cfg.d2po
    source = Path(d.discriminator)
    model = (Discriminator.load(source) if (source / "discriminator.json").is_file() else
             Discriminator(backbone=d.discriminator, max_length=d.disc_max_length, lr=d.disc_lr,
                           epochs=d.disc_epochs, seed=d.seed))
    return str(model.save(run_dir / "rounds" / "round_000" / "discriminator"))


class Round:
    """The live pieces every round uses: prompts, samplers, the discriminator service, the labeller."""

    def __init__(self, run: Run, state: State):
        from rayalign.cluster_fit import check_together, live_nodes, together_demands
        from rayalign.ray_setup import init_ray

        cfg, d = run.cfg, run.cfg.d2po
        init_ray()
        check_together(together_demands(cfg), live_nodes())  # before a sampler or the service starts
        self.cfg, self.run_dir, self.task, self.tokenizer = cfg, run.dir, run.task(d.task), run.tokenizer
        self.storage = cfg.storage()
        self.prompts = self.task.prompts("train", d.rounds * d.prompts_per_round, d.seed)
        self.prompt_ids = self.encode(self.prompts)
        for log in (GOLD_LOG, GOLD_PAIRS):  # a round that did not finish is redone: count none of its entries twice
            truncate_jsonl(run.dir / log, "round", state.rounds_done)
        self.labeller = GoldLabeller(d, self.task, state.gold_used, run.dir / GOLD_LOG)
        self.gold_pairs = self._gold_pairs_so_far()
        self.warm_pairs = read_jsonl(run.dir / WARM_PAIRS) if (run.dir / WARM_PAIRS).is_file() else []
        self.pools = run.pools  # the run's: the evaluation samples on it after the last round
        self.colocated = None
        if cfg.sampling.colocate:  # engines and trainer on the same GPUs (`rayalign.sampling.colocate`)
            from rayalign.sampling.colocate import check_colocate, colocated_groups

            check_colocate(cfg)
            self.colocated = self.pools.placement_groups = colocated_groups(cfg)
        self.pools.serving(cfg.model.name)
        self.trainer = self._trainer(state.policy)
        if state.policy != cfg.model.name:  # a resumed run: the samplers get the last round's policy from the trainer
            self.pools.receive(state.policy, self.trainer.send_weights)
        self.service = None
        if state.discriminator is not None:
            from rayalign.scoring.serve import DiscriminatorService

            self.service = DiscriminatorService(state.discriminator, name=f"discriminator_{cfg.name}",
                                                route_prefix=f"/{cfg.name}/discriminator", num_cpus=d.disc_cpus,
                                                port=d.http_port, num_gpus=d.disc_gpus,
                                                latest=str(run.dir / "discriminator_latest.txt"))

    def encode(self, prompts: list[str]) -> list[list[int]]:
        from rayalign.data.tokenize import encode_prompt

        return [encode_prompt([{"role": "user", "content": p}], self.tokenizer, self.cfg.data.chat_template)
                for p in prompts]

    def params(self, r: int):
        """How round r (0: the warm start) samples: two responses a prompt, seeded by the round."""
        from rayalign.sampling.base import SamplingParams

        sampling = self.cfg.sampling
        return SamplingParams(n=2, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_new_tokens=sampling.max_new_tokens, seed=self.cfg.d2po.seed * 1_000_003 + r)

    def _trainer(self, policy: str):
        """The trainer of every round (`rayalign.train.online`), from `policy`, the starting model as reference."""
        from rayalign.train.online import TrainerGroup

        cfg = self.cfg
        return TrainerGroup(dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, reference=cfg.model.reference or cfg.model.name)), policy,
            self.colocated)

    def restart_trainer(self, policy: str) -> None:
        """A new trainer group from the last round's policy, after one of its processes died."""
        self.trainer.close()
        self.trainer = self._trainer(policy)

    def _gold_pairs_so_far(self) -> list[dict]:
        """Gold-labelled pairs of the finished rounds ({prompt, chosen, rejected}), for the accuracy metric."""
        return read_jsonl(self.run_dir / GOLD_PAIRS)

    def close(self) -> None:
        self.trainer.close()
        if self.service is not None:
            self.service.shutdown()


def run_round(live: Round, r: int, state: State) -> tuple[State, dict]:
    """Round r (1-based): sample, score, gold-label, update the discriminator, label, train, sync weights.

    Its clock (`time/*_s`, each phase from the end of the one before, adding up to `round_s`): sampling, scoring,
    gold labels, the discriminator's update, training (its pairs read, the reference's pass, its steps, the start of
    its checkpoint; `time/train_steps_s` the steps alone, `time/train_reference_s` the reference's pass), the weight
    sync, and the wait for the checkpoint written meanwhile; `time/overhead_s` is the round less its sampling,
    scoring and train steps."""
    from rayalign.tracking import PhaseClock

    cfg, d = live.cfg, live.cfg.d2po
    round_dir = live.run_dir / "rounds" / f"round_{r:03d}"
    shutil.rmtree(round_dir, ignore_errors=True)  # a round interrupted half-way is redone whole
    live.storage.remove(f"rounds/{round_dir.name}")  # and its copy in the run's URI
    round_dir.mkdir(parents=True)
    clock = PhaseClock()
    span = slice((r - 1) * d.prompts_per_round, r * d.prompts_per_round)
    prompts, prompt_ids = live.prompts[span], live.prompt_ids[span]
    outputs = live.pools.serving(state.policy).generate(prompt_ids, live.params(r))
    clock.lap("sample_s")
    texts = [(row[0].text, row[1].text) for row in outputs]
    rewards = [tuple(live.task.gold_reward(p, t) for t in pair) for p, pair in zip(prompts, texts)]  # a metric only
    metrics = {"sampler/tokens_per_s": sum(len(c.generated_ids) for row in outputs for c in row) /
               clock.seconds["sample_s"], "policy/gold_reward": _mean([v for pair in rewards for v in pair])}
    scores = _score(live, prompts, texts)
    clock.lap("score_s")
    gold = _gold_labels(live, r, prompts, texts, scores, metrics)
    clock.lap("gold_s")
    discriminator = _update_discriminator(live, r, prompts, texts, gold, state, round_dir, metrics)
    clock.lap("disc_update_s")
    if discriminator != state.discriminator:
        scores = _score(live, prompts, texts)  # label with what the discriminator learnt this round
        clock.lap("score_s")
    labels = silver_labels(scores, gold, d.silver_min_gap) if d.mode != "gold_only" else \
        [gold.get(i) for i in range(len(texts))]
    metrics.update(silver_accuracy(labels, gold, rewards))
    rows = state.carry + _pair_rows(r, prompts, prompt_ids, outputs, scores, labels, gold)
    if live.colocated:
        live.pools.pool.sleep()  # the engines free the GPUs they share with the trainer
    steps, used, owed = plan_round(cfg, len(rows), state.owed_steps)
    policy, carry = _train(live, r, rows, steps, used, state.policy, round_dir, metrics)
    if live.colocated:
        live.pools.pool.wake_up()
    clock.lap("train_s")
    trained = policy != state.policy
    if trained:
        sync = live.pools.receive(policy, live.trainer.send_weights)  # trainer -> samplers over a collective
        metrics["weight_sync/bytes"] = sync["bytes"]
    clock.lap("weight_sync_s")
    if trained:
        live.trainer.call("saved", live.storage, _checkpoint(r))  # written meanwhile; the round's state needs it
    clock.lap("checkpoint_wait_s")
    round_s = sum(clock.seconds.values())
    busy = clock.seconds["sample_s"] + clock.seconds["score_s"] + metrics.get("time/train_steps_s", 0.0)
    metrics.update({f"time/{phase}": seconds for phase, seconds in clock.seconds.items()})
    metrics.update({"time/overhead_s": round_s - busy, "gold/used": live.labeller.used,
                    "gold/budget": live.labeller.budget, "pairs": len(rows) - len(carry), "pairs_carried": len(carry),
                    "round_s": round_s})
    return State(r, policy, discriminator, live.labeller.used, carry, owed), metrics


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _score(live: Round, prompts: list[str], texts: list[tuple[str, str]]) -> list[tuple[float, float]]:
    """Discriminator scores of both samples of every pair (zeros without a discriminator)."""
    if live.service is None:
        return [(0.0, 0.0)] * len(texts)
    flat = live.service.score([p for p in prompts for _ in range(2)], [t for pair in texts for t in pair])
    return list(zip(flat[0::2], flat[1::2]))


def _gold_labels(live: Round, r: int, prompts, texts, scores, metrics: dict) -> dict[int, int | None]:
    """Select pairs, ask the gold labeller, and measure how often the silver labels agreed with it."""
    d = live.cfg.d2po
    relabels = d.relabels if d.mode != "frozen" else d.window  # frozen: spend the budget as early as possible
    strategy = d.strategy if d.mode == "d2po" else "rand"  # a gap needs a discriminator that learns
    rng = random.Random(d.seed * 1_000_003 + r)
    chosen = select_for_gold([abs(a - b) for a, b in scores], d.window, relabels, strategy, live.labeller.left, rng)
    gold = {i: live.labeller.label(r, i, prompts[i], *texts[i]) for i in chosen}
    verdicts = [(gold[i], preferred(*scores[i])) for i in gold]
    agree = [label == silver for label, silver in verdicts if label is not None and silver is not None]
    metrics.update({"gold/used_round": len(chosen), "silver_gold_agreement": _mean([float(a) for a in agree])})
    return gold


def _update_discriminator(live: Round, r: int, prompts, texts, gold, state: State, round_dir: Path,
                          metrics: dict) -> str | None:
    """Accuracy on the gold pairs before training on them; then train, save and swap the served weights."""
    pairs = [{"prompt": prompts[i], "chosen": texts[i][label], "rejected": texts[i][1 - label], "round": r}
             for i, label in gold.items() if label is not None]
    if pairs:
        with open(live.run_dir / GOLD_PAIRS, "a") as handle:
            handle.writelines(json.dumps(p) + "\n" for p in pairs)
    if state.discriminator is None or not pairs:
        live.gold_pairs += pairs
        return state.discriminator
    relative = f"rounds/{round_dir.name}/discriminator"
    # trained in its Serve replica, which then serves it
    metrics.update(live.service.update(pairs, live.warm_pairs + live.gold_pairs, str(round_dir / "discriminator"),
                                       live.storage, relative, live.cfg.d2po.disc_training == "head"))
    live.gold_pairs += pairs
    return str(round_dir / "discriminator")


def _pair_rows(r: int, prompts, prompt_ids, outputs, scores, labels, gold) -> list[dict]:
    from rayalign.pipelines.pairs import Candidate, pair_row

    rows = []
    for i, label in enumerate(labels):
        if label is None or outputs[i][0].token_ids == outputs[i][1].token_ids:
            continue
        candidates = [Candidate.sampled(c) for c in outputs[i]]
        for candidate, score in zip(candidates, scores[i]):
            candidate.score = score
        rows.append(pair_row(prompts[i], prompt_ids[i], candidates[label], candidates[1 - label], round=r,
                             label="gold" if i in gold else "silver", prompt_index=i))
    return rows


def _pair_columns() -> dict:
    import pyarrow as pa

    return {"round": pa.int64(), "label": pa.string(), "prompt_index": pa.int64()}


def _train(live: Round, r: int, rows: list[dict], steps: int, used: list[int], policy: str, round_dir: Path,
           metrics: dict):
    """`steps` DPO steps on the round's pairs (`plan_round`) from the current policy, by the run's trainer; then its
    checkpoint (what a resumed run starts from). Returns (the new policy's checkpoint, the rows no step used, carried
    to the next round)."""
    from rayalign.errors import TrainingError
    from rayalign.pipelines.pairs import write_pairs
    from rayalign.train.driver import prepare_pairs
    from rayalign.train.online import TrainerLost

    cfg = live.cfg
    if not steps:
        if r < cfg.d2po.rounds or policy == cfg.model.name:
            return policy, rows
        # The last round, with less than a batch: the evaluation still reads the policy as a model directory (an
        # earlier round's checkpoint holds training shards only, and is deleted once this one is saved).
        return _save(live, r), rows
    path = write_pairs(rows, round_dir / "pairs.parquet", _pair_columns())
    round_data = dataclasses.replace(cfg.data, path=str(path), format="token_ids")
    pairs = prepare_pairs(dataclasses.replace(cfg, data=round_data), tokenizer=live.tokenizer).pairs
    if len(pairs) != len(rows):
        raise RuntimeError(f"d2po round {r}: {len(rows)} rows gave {len(pairs)} pairs; the carry needs one per row")
    for attempt in range(cfg.train.max_failures + 1):
        try:
            result = live.trainer.train_round(pairs, steps)
            break
        except TrainerLost as error:
            if attempt == cfg.train.max_failures:
                raise TrainingError(f"d2po round {r}: {error}; train.max_failures ({cfg.train.max_failures}) "
                                    "used up. Rerun the same command to resume after the last finished round") from None
            print(f"rayalign: d2po round {r}: {error}; its training starts again from the last round's policy",
                  flush=True)
            live.restart_trainer(policy)
    if result["status"] != "ok":
        raise TrainingError(f"d2po round {r}: the loss became NaN/inf; lower train.lr or check the round's pairs "
                            f"({path})")
    done = result["rows"]  # a metrics row per step taken
    atomic_write_text(round_dir / "train_metrics.jsonl", "".join(json.dumps(row) + "\n" for row in done))
    checkpoint = _save(live, r)
    metrics.update({"train/loss": done[-1]["loss"], "train/steps": len(done),
                    "train/tokens_per_s": statistics.median(row["tokens_per_s"] for row in done),
                    "time/train_steps_s": result["steps_s"], "time/train_reference_s": result["reference_s"]})
    unused = set(range(len(rows))) - set(used)
    return checkpoint, [rows[i] for i in sorted(unused)]


def _save(live: Round, r: int) -> str:
    """Start round r's policy checkpoint (finished after the sync; the last round's as the model directory the
    evaluation reads) and return where it will be."""
    live.trainer.call("save", str(live.run_dir / _checkpoint(r)), r == live.cfg.d2po.rounds)
    return f"{live.storage.root}/{_checkpoint(r)}"


def _checkpoint(r: int) -> str:
    """Where round r's policy checkpoint is, in the run directory."""
    return f"checkpoints/round_{r:03d}"


def run_d2po(run: Run) -> dict:
    """Rounds of sample -> label -> train, resuming after the last finished round (the run's ending evaluates)."""
    from rayalign.monitoring import record_d2po_round
    from rayalign.tracking import Tracker

    cfg, run_dir = run.cfg, run.dir
    if cfg.d2po.relabels < 1 or cfg.d2po.window < 1 or cfg.d2po.prompts_per_round < 1:
        raise ConfigError("d2po.window, d2po.relabels and d2po.prompts_per_round must be >= 1")
    state = State.load(run_dir, cfg)
    if state.rounds_done == 0 and state.discriminator is None:
        state.discriminator = _initial_discriminator(cfg, run_dir)
    last = min(cfg.d2po.rounds, cfg.d2po.stop_after_round or cfg.d2po.rounds)
    tracker = Tracker(run_dir, cfg.tracking, cfg.name, config_lib.flatten(config_lib.to_dict(cfg)), "d2po")
    tracker.truncate_after(state.rounds_done)
    if state.rounds_done < last:
        live = Round(run, state)
        try:
            if state.rounds_done == 0 and cfg.d2po.disc_warm_start and live.service is not None:
                state.discriminator = warm_start(live) or state.discriminator
            for r in range(state.rounds_done + 1, last + 1):
                state, metrics = run_round(live, r, state)
                tracker.log({k: v for k, v in metrics.items() if v is not None}, step=r)
                record_d2po_round(metrics, run=cfg.name)
                state.save(run_dir)
                for finished in (f"rounds/round_{r:03d}", GOLD_LOG, GOLD_PAIRS, "metrics.jsonl", STATE_FILE):
                    live.storage.push(finished)  # a URI run: a rerun on any node resumes after this round
                _drop_old_weights(live, state)
                print(f"rayalign: d2po round {r}/{cfg.d2po.rounds}: " + ", ".join(
                    f"{k} {v:.3g}" for k, v in metrics.items() if isinstance(v, float | int)), flush=True)
        finally:
            live.close()
    tracker.finish()
    rounds = _round_rows(run_dir)
    return {"mode": cfg.d2po.mode, "rounds_done": state.rounds_done, "gold_used": state.gold_used,
            "rounds": rounds, "train": _train_totals(state, rounds, cfg.d2po.rounds, trainer_mode(cfg))}


def warm_start(live: Round) -> str | None:
    """The discriminator's head fitted on d2po.disc_warm_start gold-labelled pairs before round 1 (outside the budget,
    never trained on by DPO): the starting policy's two samples on as many training prompts after the rounds', gold
    ties dropped. Its pairs are kept in the run directory, so a run stopped before round 1 ends refits on the same
    ones. Returns the fitted discriminator's checkpoint (round 0's, in place of the untrained one), None when every
    pair was a gold tie."""
    cfg, d = live.cfg, live.cfg.d2po
    if not live.warm_pairs:
        first = d.rounds * d.prompts_per_round
        prompts = live.task.prompts("train", first + d.disc_warm_start, d.seed)[first:]
        outputs = live.pools.serving(cfg.model.name).generate(live.encode(prompts), live.params(0))
        for prompt, row in zip(prompts, outputs):
            texts = [c.text for c in row]
            better = preferred(*(live.task.gold_reward(prompt, t) for t in texts))
            if better is not None:
                live.warm_pairs.append({"prompt": prompt, "chosen": texts[better], "rejected": texts[1 - better],
                                        "round": 0})
        atomic_write_text(live.run_dir / WARM_PAIRS, "".join(json.dumps(p) + "\n" for p in live.warm_pairs))
    if not live.warm_pairs:
        print("rayalign: d2po warm start: every pair was a gold tie; the discriminator starts untrained", flush=True)
        return None
    relative = "rounds/round_000/discriminator"
    metrics = live.service.update(live.warm_pairs, [], str(live.run_dir / relative), live.storage, relative,
                                  refit_head=True)
    print(f"rayalign: d2po warm start: the discriminator's head fitted on {len(live.warm_pairs)} gold-labelled pairs "
          f"of {d.disc_warm_start} prompts (accuracy on them before: {metrics['disc/accuracy_new_gold']:.2f})",
          flush=True)
    return str(live.run_dir / relative)


def _drop_old_weights(live: Round, state: State) -> None:
    """Once a round's state is saved, earlier policy and discriminator weights are never read again."""
    keep = {_where(state.policy), _where(state.discriminator or live.run_dir)}
    for checkpoint in sorted((live.run_dir / "checkpoints").glob("round_*")):
        relative = f"checkpoints/{checkpoint.name}"
        if _where(f"{live.storage.root}/{relative}") not in keep:
            shutil.rmtree(checkpoint)
            live.storage.remove(relative)
    for round_dir in sorted((live.run_dir / "rounds").glob("round_*"))[:-1]:
        discriminator = round_dir / "discriminator"
        if discriminator.is_dir() and _where(discriminator) not in keep:
            shutil.rmtree(discriminator)
            live.storage.remove(f"rounds/{round_dir.name}/discriminator")


def _where(path: str | Path) -> str:
    return str(path) if is_uri(path) else str(Path(path).resolve())


def _round_rows(run_dir: Path) -> list[dict]:
    from rayalign.tracking import read_metrics

    return read_metrics(run_dir)


def trainer_mode(cfg: config_lib.Config) -> str:
    """How the run's trainer runs on this cluster (`train.num_workers: auto` resolved)."""
    from rayalign.cluster_fit import resolved_train

    train = resolved_train(cfg.train)
    return "local mode" if train.local_mode else f"{train.num_workers} Ray actor worker(s)"


def _train_totals(state: State, rounds: list[dict], planned: int, mode: str) -> TrainSummary:
    """The rounds' trainings as one: finished when every planned round ran (a later round's steps are not known)."""
    from rayalign.summary import train_summary

    steps = int(sum(row.get("train/steps", 0) for row in rounds))
    losses = [row["train/loss"] for row in rounds if row.get("train/loss") is not None]
    return train_summary(steps=steps, total_steps=steps if state.rounds_done == planned else None,
                         checkpoint=state.policy, final_metrics={"loss": losses[-1]} if losses else {},
                         speeds=[row["train/tokens_per_s"] for row in rounds if row.get("train/tokens_per_s")],
                         wall_time_s=sum(row.get("round_s", 0.0) for row in rounds), mode=mode)
