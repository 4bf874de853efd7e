"""Bad rows: a :class:`DataError` that also carries a short reason key.

The key lets ``on_bad_row=skip`` count dropped rows by cause (``stats["bad_rows"]``), while the
message stays the one line a user reads when ``on_bad_row=error`` stops the run.
"""

from __future__ import annotations

from rayalign.errors import DataError

MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_RESPONSE = "empty_response"
IDENTICAL_RESPONSES = "identical_responses"
UNDECODABLE_TEXT = "undecodable_text"
NO_ROOM_FOR_RESPONSE = "no_room_for_response"
INVALID_JSON = "invalid_json"
PROMPT_MISMATCH = "prompt_mismatch"
NOT_A_TRANSCRIPT = "not_a_transcript"
EMPTY_PROMPT = "empty_prompt"
OUT_OF_VOCABULARY = "out_of_vocabulary"

SKIP_HINT = "or set data.on_bad_row=skip"


class BadRow(DataError):
    """One unusable row; ``reason`` is one of the keys above.

    ``problem`` should say what is wrong and how to fix it; the skip hint is appended here so
    every bad-row message offers both ways out. Newlines are folded so the message is one line.
    """

    def __init__(self, reason: str, source: str, row: int | None, field: str | None, problem: str):
        self.reason = reason
        one_line = " ".join(f"{problem} {SKIP_HINT}".split())
        super().__init__(source, row, field, one_line)
