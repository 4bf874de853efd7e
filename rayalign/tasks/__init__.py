"""Embedded tasks: prompts with programmatic gold rewards, so alignment is measurable offline."""
