"""A method defined outside the package: what a user's own module looks like (tests/test_recipes.py).

"toy" trains DPO on data.path in reverse file order, says it samples (so the fit check counts a sampler pool) and
reports its final training loss to Tune.
"""

from __future__ import annotations

import dataclasses

from rayalign.recipes import Recipe, register_recipe


def run_toy(cfg) -> dict:
    from rayalign.data import PreparedData, prepare_data
    from rayalign.models import load_tokenizer
    from rayalign.train.driver import run_training

    prepared = prepare_data(cfg.data, load_tokenizer(cfg.model.name))
    reversed_pairs = PreparedData(pairs=prepared.pairs[::-1], stats=prepared.stats)
    return {"pipeline": "toy", "train": run_training(dataclasses.replace(cfg), prepared=reversed_pairs)}


register_recipe(Recipe("toy", "tests.toy_recipe:run_toy", "a toy method: DPO on data.path in reverse order",
                       samples=lambda cfg: True, evaluates=False,
                       trial_figures=lambda summary: {"train_loss": summary["train"]["final_metrics"]["loss"]},
                       figures=("train_loss",)))
