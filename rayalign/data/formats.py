"""Normalise the preference-data forms people actually have into one schema.

Every row becomes a :class:`PreferenceExample`: the prompt as chat messages plus the chosen and
rejected response texts. The forms (``format: auto`` picks one per row from its fields):

- ``standard`` (TRL): ``prompt``, ``chosen``, ``rejected`` strings.
- ``conversational`` (TRL): ``chosen``/``rejected`` message lists ending with the assistant's
  response, with a ``prompt`` message list, or without one (implicit prompt: the conversations'
  shared leading messages are the prompt).
- ``hh_rlhf`` (Anthropic HH-RLHF): only ``chosen``/``rejected`` whole transcripts
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; the last assistant turn is the response.
- ``ultrafeedback`` (HuggingFaceH4/ultrafeedback_binarized): a ``prompt`` string and full
  ``[user, assistant]`` conversations as ``chosen``/``rejected``.

Anything unusable raises a :class:`BadRow` whose message names the field and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rayalign.data.bad_rows import (EMPTY_RESPONSE, IDENTICAL_RESPONSES, MISSING_FIELD, NOT_A_TRANSCRIPT,
                                    PROMPT_MISMATCH, UNDECODABLE_TEXT, WRONG_TYPE, BadRow)

Messages = list[dict[str, str]]
FORMS = ("standard", "conversational", "hh_rlhf", "ultrafeedback")
_ROLE_OF_SPEAKER = {"Human": "user", "Assistant": "assistant"}
_LAST_ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_FIELD_MEANING = {"prompt": "the prompt", "chosen": "the preferred response",
                  "rejected": "the dispreferred response"}


@dataclass
class PreferenceExample:
    """One usable row: a prompt (chat messages) and two responses; `row`/`source` locate it."""

    prompt: Messages
    chosen: str
    rejected: str
    row: int
    source: str


@dataclass
class _Row:
    """A raw row with where it came from, so every check can name the file, row and field."""

    raw: dict
    row: int
    source: str

    def bad(self, reason: str, field: str | None, problem: str) -> BadRow:
        return BadRow(reason, self.source, self.row, field, problem)

    def require(self, field: str, types: tuple[type, ...], expected: str) -> Any:
        value = self.raw.get(field)
        if value is None:
            raise self.bad(MISSING_FIELD, field, f"missing; add the field ({_FIELD_MEANING[field]})")
        if not isinstance(value, types):
            raise self.bad(WRONG_TYPE, field, f"expected {expected}, got {type(value).__name__}; "
                           "fix the value")
        return value


def normalise(raw: dict, row: int, source: str, form: str = "auto") -> PreferenceExample:
    """One raw row in any supported form -> a checked PreferenceExample (or raises BadRow)."""
    current = _Row(raw, row, source)
    if form == "auto":
        form = detect_form(current)
    prompt, chosen, rejected = _PARSERS[form](current)
    _check_responses(current, prompt, chosen, rejected)
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, row=row, source=source)


def detect_form(current: _Row) -> str:
    """Pick the form from the fields and their types: lists mean messages, no prompt means HH."""
    chosen = current.require("chosen", (str, list), "a string or a list of messages")
    current.require("rejected", (str, list), "a string or a list of messages")
    prompt = current.raw.get("prompt")
    if isinstance(chosen, list):
        return "ultrafeedback" if isinstance(prompt, str) else "conversational"
    return "hh_rlhf" if prompt is None else "standard"


def _user(text: str) -> Messages:
    return [{"role": "user", "content": text}]


def _parse_standard(current: _Row) -> tuple[Messages, str, str]:
    """Prompt and responses as strings (a message-list prompt is accepted too)."""
    prompt = current.require("prompt", (str, list), "a string or a list of messages")
    messages = _user(prompt) if isinstance(prompt, str) else _messages(current, "prompt", prompt)
    chosen = current.require("chosen", (str,), "a string (the standard form)")
    rejected = current.require("rejected", (str,), "a string (the standard form)")
    return messages, chosen, rejected


def _parse_conversational(current: _Row) -> tuple[Messages, str, str]:
    """Explicit prompt messages, or none (the implicit prompt is the conversations' shared start)."""
    prompt = current.raw.get("prompt")
    if prompt is not None and not isinstance(prompt, list):
        raise current.bad(WRONG_TYPE, "prompt", f"expected a list of messages, got {type(prompt).__name__}; "
                          "fix the value or set data.format")
    explicit = _messages(current, "prompt", prompt) if prompt is not None else []
    leading, chosen, rejected = _split_conversations(current)
    return explicit + leading, chosen, rejected


def _parse_ultrafeedback(current: _Row) -> tuple[Messages, str, str]:
    """Full conversations carry the prompt; the `prompt` string is used only when they do not."""
    prompt = current.require("prompt", (str,), "a string (the UltraFeedback form)")
    leading, chosen, rejected = _split_conversations(current)
    return leading or _user(prompt), chosen, rejected


def _split_conversations(current: _Row) -> tuple[Messages, str, str]:
    """(shared leading messages, chosen response, rejected response) of two conversations."""
    parts = {}
    for field in ("chosen", "rejected"):
        value = current.require(field, (list,), "a list of messages (the conversational form)")
        parts[field] = _split_final_reply(current, field, _messages(current, field, value))
    (chosen_lead, chosen), (rejected_lead, rejected) = parts["chosen"], parts["rejected"]
    if chosen_lead != rejected_lead:
        raise current.bad(PROMPT_MISMATCH, "rejected", "its messages before the final reply differ from "
                          "those of 'chosen'; both must continue the same conversation")
    return chosen_lead, chosen, rejected


def _split_final_reply(current: _Row, field: str, messages: Messages) -> tuple[Messages, str]:
    if not messages or messages[-1]["role"] != "assistant":
        raise current.bad(EMPTY_RESPONSE, field, "no assistant message at the end of the conversation; "
                          f"end {field} with the assistant's response")
    return messages[:-1], messages[-1]["content"]


def _messages(current: _Row, field: str, value: list) -> Messages:
    """Validate a message list and keep only role and content (extra keys are dropped)."""
    out = []
    for number, message in enumerate(value, start=1):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise current.bad(WRONG_TYPE, field, f"message {number} is not an object with string 'role' "
                              "and 'content'; fix the message")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _parse_hh_rlhf(current: _Row) -> tuple[Messages, str, str]:
    """Split both transcripts at their last assistant turn; the part before must be the same."""
    parts = {}
    for field in ("chosen", "rejected"):
        text = current.require(field, (str,), "a string (an HH-RLHF transcript)")
        parts[field] = _split_transcript(current, field, text)
    (chosen_prompt, chosen), (rejected_prompt, rejected) = parts["chosen"], parts["rejected"]
    if chosen_prompt != rejected_prompt:
        raise current.bad(PROMPT_MISMATCH, "rejected", "its dialogue before the last assistant turn differs "
                          "from that of 'chosen'; both transcripts must share everything but the last reply")
    return transcript_messages(chosen_prompt), chosen, rejected


def _split_transcript(current: _Row, field: str, text: str) -> tuple[str, str]:
    cut = text.rfind(_LAST_ASSISTANT)
    if cut < 0:
        raise current.bad(NOT_A_TRANSCRIPT, field, "no '\\n\\nAssistant:' turn, so it is not an HH-RLHF "
                          "transcript; give whole transcripts, or add a 'prompt' field (standard form)")
    return text[:cut], text[cut + len(_LAST_ASSISTANT):].strip()


def transcript_messages(dialogue: str) -> Messages:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [user a, assistant b]; text before any turn is the user's."""
    pieces = _TURN.split(dialogue)
    messages = _user(pieces[0].strip()) if pieces[0].strip() else []
    for speaker, content in zip(pieces[1::2], pieces[2::2]):
        messages.append({"role": _ROLE_OF_SPEAKER[speaker], "content": content.strip()})
    return messages


def _check_responses(current: _Row, prompt: Messages, chosen: str, rejected: str) -> None:
    """Rules for every form: encodable text, non-empty responses that differ."""
    prompt_field = "prompt" if "prompt" in current.raw else "chosen"
    texts = [(prompt_field, message["content"]) for message in prompt]
    for field, text in texts + [("chosen", chosen), ("rejected", rejected)]:
        if not _is_encodable(text):
            raise current.bad(UNDECODABLE_TEXT, field, "undecodable text (a lone UTF-16 surrogate such as "
                              "\\ud800); replace the broken characters")
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise current.bad(EMPTY_RESPONSE, field, f"empty response; give the row a non-empty {field} response")
    if chosen == rejected:
        raise current.bad(IDENTICAL_RESPONSES, "rejected", "identical to 'chosen', so the pair teaches nothing; "
                          "give a different rejected response")


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_PARSERS = {"standard": _parse_standard, "conversational": _parse_conversational,
            "hh_rlhf": _parse_hh_rlhf, "ultrafeedback": _parse_ultrafeedback}
