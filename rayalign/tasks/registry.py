"""A registry of tasks: prompts with a programmatic gold reward, so alignment is measurable offline.

A :class:`Task` gives seeded prompts from three disjoint splits (``train``, ``validation``, ``held_out``), a gold
reward for a (prompt, response) pair, and optionally a *strong* off-policy response: one with a
high gold reward written in a style the policy would not produce by itself (InCo-DPO needs
better-but-shifted data to continue from).

Splits are disjoint by construction: a prompt belongs to ``held_out`` when a stable hash of its
text (SHA-256, not Python's salted ``hash``) falls in the held-out share, to ``validation`` when it
falls in the band above it, so the split of a prompt
never depends on the seed, the order of drawing or the process.

Adding a task takes a prompt list and a reward function::

    from rayalign.tasks.registry import make_task, register_task

    def reward(prompt: str, response: str) -> float:
        return float("please" in response.lower())

    polite = make_task("polite", ["Ask for the salt.", "Ask for a pen.", ...], reward)

in ``my_tasks.py``; ``rayalign eval --task my_tasks:polite`` (or ``eval.task: my_tasks:polite``, ``inco.task``, ...)
imports it from the current directory and registers it (`rayalign.plugins`). A module that calls
``register_task(polite)`` itself and is named in the config's ``recipes`` list makes ``polite`` known by name. For an unbounded prompt
space, build a :class:`Task` with a ``generate(rng) -> str`` function instead of a list.
"""

from __future__ import annotations

from rayalign.errors import RayAlignError
from rayalign.tasks.base import SPLITS, Task, in_held_out, make_task

__all__ = ["SPLITS", "TASKS", "Task", "get_task", "in_held_out", "make_task", "register_task"]

TASKS: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
    """Add `task` to TASKS; a second task of the same name is an error unless `replace`."""
    if task.name in TASKS and not replace:
        raise RayAlignError(f"a task named '{task.name}' is already registered; pass replace=True")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task `name`, or a user's task given as "module:attribute" (imported, then registered under
    its own name); an error listing the known ones."""
    if ":" in name and name not in TASKS:
        from rayalign.plugins import load_attribute

        task = load_attribute(name, f"task '{name}'")
        if not isinstance(task, Task):
            raise RayAlignError(f"task '{name}' is a {type(task).__name__}, not a Task: make it with "
                                "rayalign.tasks.registry.make_task(name, prompts, reward)")
        TASKS[name] = register_task(task, replace=True)
    if name not in TASKS:
        raise RayAlignError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))} (or yours as "
                            "module:attribute, e.g. my_tasks:polite)")
    return TASKS[name]


def _register_builtins() -> None:
    """The built-in tasks (pure Python, cheap to import); they import Task from tasks.base."""
    from rayalign.tasks import arithmetic, bullets, word_collector

    for task in (word_collector.TASK, word_collector.BODY_TASK, arithmetic.TASK, bullets.TASK):
        TASKS.setdefault(task.name, task)


_register_builtins()
