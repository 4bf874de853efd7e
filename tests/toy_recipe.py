"""A method defined outside the package: what a user's own module looks like (tests/test_recipes.py).

"toy" trains DPO on data.path in reverse file order, says it samples (so the fit check counts a sampler pool) and
reports its final training loss to Tune.
"""

from __future__ import annotations

from rayalign.recipes import Recipe, register_recipe


def run_toy(run) -> dict:
    """Its figures and its training's summary; the run (a `rayalign.pipelines.Run`) writes the ending."""
    from rayalign.data import PreparedData, prepare_data
    from rayalign.train.driver import run_training

    prepared = prepare_data(run.cfg.data, run.tokenizer)
    reversed_pairs = PreparedData(pairs=prepared.pairs[::-1], stats=prepared.stats)
    return {"train": run_training(run.cfg, prepared=reversed_pairs)}


register_recipe(Recipe("toy", "tests.toy_recipe:run_toy", "a toy method: DPO on data.path in reverse order",
                       samples=lambda cfg: True, evaluates=False,
                       trial_figures=lambda summary: {"train_loss": summary["train"]["final_metrics"]["loss"]},
                       figures=("train_loss",)))
