"""Embedded tasks: prompts with programmatic gold rewards, so alignment is measurable offline.

``rayalign.tasks.registry`` holds them (``get_task("word_collector")``, ``"math"``, ``"bullets"``)
and explains how to add one.
"""
