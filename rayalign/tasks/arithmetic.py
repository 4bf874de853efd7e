"""D2PO's math task (arXiv 2405.01511): solve a nested arithmetic expression step by step.

Format (our choice; D2PO's papers.md entry fixes the reward, not the text):

- prompt: an instruction line, then the expression (the prompt's topic) on the last line, e.g.
  ``(3 + (4 * 2)) - 5``. Expressions use single digits 1-9, ``+ - *``, 2-4 operations; every
  operation except the outermost sits in parentheses, and no intermediate value is negative.
- gold answer: one step per line. Line 0 restates the expression; each later line is the whole
  expression with exactly one operation done, always the leftmost innermost one (an operation
  whose operands are both numbers); the last line is the value::

      (3 + (4 * 2)) - 5
      (3 + 8) - 5
      11 - 5
      6

Reward: lines are compared with the gold steps by position after whitespace is removed (and a
leading ``=`` dropped); line 0 is not scored ("steps after the first"). For each later position
up to the longer of the two: −100 when the predicted line is missing or does not parse as an
arithmetic expression, else −(character edit distance to the gold step, "" past the gold's end).
So the best reward is 0, and a response that stops early pays −100 per missing step.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass

from rayalign.tasks.base import Task

INSTRUCTION = ("Solve step by step, innermost parentheses first. Write one step per line: the whole expression "
               "with one operation done, until only the number is left.")
UNPARSABLE = -100.0
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_AST_OPS = (ast.Add, ast.Sub, ast.Mult)


@dataclass
class Node:
    op: str
    left: Tree
    right: Tree


Tree = int | Node


def random_tree(rng: random.Random, ops: int) -> Tree:
    if ops == 0:
        return rng.randint(1, 9)
    left_ops = rng.randint(0, ops - 1)
    return Node(rng.choice("+-*"), random_tree(rng, left_ops), random_tree(rng, ops - 1 - left_ops))


def value(tree: Tree) -> int:
    return tree if isinstance(tree, int) else _OPS[tree.op](value(tree.left), value(tree.right))


def render(tree: Tree, top: bool = True) -> str:
    """The expression text; every operation but the outermost in parentheses."""
    if isinstance(tree, int):
        return str(tree)
    text = f"{render(tree.left, False)} {tree.op} {render(tree.right, False)}"
    return text if top else f"({text})"


def reduce_once(tree: Tree) -> Tree:
    """Do the leftmost innermost operation (both operands numbers)."""
    if isinstance(tree, int):
        return tree
    if isinstance(tree.left, int) and isinstance(tree.right, int):
        return value(tree)
    if not isinstance(tree.left, int):
        return Node(tree.op, reduce_once(tree.left), tree.right)
    return Node(tree.op, tree.left, reduce_once(tree.right))


def gold_steps(tree: Tree) -> list[str]:
    steps = [render(tree)]
    while not isinstance(tree, int):
        tree = reduce_once(tree)
        steps.append(render(tree))
    return steps


def _non_negative(tree: Tree) -> bool:
    return isinstance(tree, int) or (value(tree) >= 0 and _non_negative(tree.left) and _non_negative(tree.right))


def random_expression(rng: random.Random) -> Tree:
    while True:
        tree = random_tree(rng, rng.randint(2, 4))
        if _non_negative(tree) and value(tree) <= 999:
            return tree


def parse_expression(text: str) -> Tree | None:
    """The expression tree of `text`, or None when it is not integers with + - * and parentheses."""
    try:
        body = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return None
    return _from_ast(body)


def _from_ast(node) -> Tree | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _from_ast(node.operand)
        return -inner if isinstance(inner, int) else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, _AST_OPS):
        left, right = _from_ast(node.left), _from_ast(node.right)
        if left is None or right is None:
            return None
        return Node("+-*"[_AST_OPS.index(type(node.op))], left, right)
    return None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute each cost 1), one row at a time."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _normalise(line: str) -> str:
    return "".join(line.split()).removeprefix("=")


def step_reward(predicted: list[str], gold: list[str]) -> float:
    """Σ over positions 1.. of −edit distance, or −100 for a missing or unparsable line."""
    predicted = [_normalise(line) for line in predicted]
    gold = [_normalise(line) for line in gold]
    total = 0.0
    for i in range(1, max(len(predicted), len(gold))):
        line = predicted[i] if i < len(predicted) else None
        if line is None or len(line) > 200 or parse_expression(line) is None:
            total += UNPARSABLE
        else:
            total -= edit_distance(line, gold[i] if i < len(gold) else "")
    return total


def expression_of(prompt: str) -> str:
    return prompt.strip().splitlines()[-1]


def gold_reward(prompt: str, response: str) -> float:
    tree = parse_expression(expression_of(prompt))
    if tree is None:
        raise ValueError(f"not a math-task prompt: {prompt!r}")
    lines = [line for line in response.splitlines() if line.strip()]
    return step_reward(lines, gold_steps(tree))


def random_topic(rng: random.Random) -> str:
    """A topic is an expression; the prompt is the instruction above it."""
    return render(random_expression(rng))


def task_prompt(topic: str, rng: random.Random) -> str:
    return f"{INSTRUCTION}\n{topic}"


def sub_expressions(topic: str) -> list[str]:
    """Every sub-expression with at least two operations (the topic included), rendered on its own:
    the split keys, so a held-out expression never appears inside a training one."""
    keys, stack = [], [parse_expression(topic)]
    while stack:
        tree = stack.pop()
        if isinstance(tree, Node):
            if isinstance(tree.left, Node) or isinstance(tree.right, Node):
                keys.append(render(tree))
            stack += [tree.left, tree.right]
    return keys


def strong_response(prompt: str, rng: random.Random) -> str:
    """The gold chain itself, bare lines and no prose: reward 0, a style chat models do not use."""
    return "\n".join(gold_steps(parse_expression(expression_of(prompt))))


def bridge(prompt: str, chosen: str, rejected: str) -> str:
    """BMC's edit for this task: fix the first step of `rejected` (after the restated expression) that `chosen`
    writes differently, by taking `chosen`'s line; when every step agrees, add `chosen`'s next step where
    `rejected` stopped early, or drop the steps `rejected` has beyond `chosen`'s last."""
    good = [line for line in chosen.splitlines() if line.strip()]
    lines = [line for line in rejected.splitlines() if line.strip()]
    for i in range(1, min(len(lines), len(good))):
        if _normalise(lines[i]) != _normalise(good[i]):
            return "\n".join(lines[:i] + [good[i]] + lines[i + 1:])
    if len(lines) < len(good):
        return "\n".join(lines + [good[len(lines)]])
    return "\n".join(lines[:len(good)])


TASK = Task("math", random_topic, task_prompt, gold_reward, strong_response,
            description="D2PO math: nested arithmetic solved step by step; reward = -edit distance per step, "
                        "-100 per unparsable step (best 0)", held_out_share=0.15, reward_range=(None, 0.0),
            split_keys=sub_expressions, editor=bridge)
