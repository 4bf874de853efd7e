"""A MuJoCo preference-optimisation benchmark (after arXiv 2411.06568): cheap, controlled, scored by return.

- ``experts``: an LQR controller per environment and the graded policies made from it (expert, mediocre, bad).
- ``data``: preference pairs of trajectory segments branched from the same state, with the paper's two problem
  settings as knobs: ``noise`` (a fraction of labels flipped) and ``mixed`` (a fraction of the preferred
  segments from the mediocre policy).
- ``policy``: a Gaussian MLP policy, behaviour cloning for the reference, preference optimisation with any
  rayalign loss, and the environment return as the score.

`rayalign run jobs/mujoco_po.yaml` runs one loss on one setting, a Ray task per seed (``pipelines/mujoco``).
Needs the ``mujoco`` extra (gymnasium[mujoco], scipy).
"""
