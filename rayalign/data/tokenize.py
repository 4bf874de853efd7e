"""Token ids for a preference pair: chat-templated prompt, EOS-terminated responses, truncation.

The prompt and each response are encoded separately, so the boundary between them is exact and
the response mask needs no guessing. Truncation keeps what matters most for the loss: a prompt
loses its oldest tokens (cut from the left, the question stays), a response loses its end (cut
from the right, its beginning is what the prompt conditions).

Pairs a pipeline sampled arrive as token ids (``prompt_ids``, ``chosen_ids``, ``rejected_ids``):
those are trained as they are, never re-tokenised from their text, so training sees exactly what
was sampled and scored; a response cut off by the token budget has no EOS (the model did not
stop there), a finished one keeps the EOS that ended it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rayalign.config import DataConfig
from rayalign.data.bad_rows import (EMPTY_PROMPT, EMPTY_RESPONSE, IDENTICAL_RESPONSES, MISSING_FIELD,
                                    NO_ROOM_FOR_RESPONSE, OUT_OF_VOCABULARY, WRONG_TYPE, BadRow)
from rayalign.data.formats import Messages, PreferenceExample


@dataclass
class TokenizedPair:
    """One training pair; the marks (BMC's edited tokens) align with the response ids."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_marks: list[bool] | None = None
    rejected_marks: list[bool] | None = None


@dataclass
class Truncation:
    """What truncation did to one pair: whether the prompt was cut, how many responses were."""

    prompt_cut: bool = False
    responses_cut: int = 0


def uses_chat_template(tokenizer, wanted: bool) -> bool:
    return wanted and bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(messages: Messages, tokenizer, chat_template: bool = True) -> list[int]:
    """The prompt as the model sees it before answering (one conversation of `encode_prompts`)."""
    return encode_prompts([messages], tokenizer, chat_template)[0]


def encode_prompts(conversations: list[Messages], tokenizer, chat_template: bool = True) -> list[list[int]]:
    """Each prompt templated with the generation prompt, or, without a template, its message texts joined by blank
    lines with the usual special tokens. One render and one encode call for all: a fast tokenizer spreads the batch
    over its threads (the same ids as encoding them one by one, tests/test_data.py)."""
    if not conversations:
        return []
    if uses_chat_template(tokenizer, chat_template):
        texts = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        return encode_texts(texts, tokenizer, special_tokens=False)  # the template wrote the special tokens
    texts = ["\n\n".join(message["content"] for message in messages) for messages in conversations]
    return encode_texts(texts, tokenizer, special_tokens=True)


def encode_texts(texts: list[str], tokenizer, special_tokens: bool) -> list[list[int]]:
    """Token ids of each text: a fast tokenizer's Rust encoder on the whole batch (its threads, no per-text
    conversion into transformers' encodings), else the tokenizer's own call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets (tokenizers >= 0.21)
    return [encoding.ids for encoding in encode(texts, add_special_tokens=special_tokens)]


def encode_response(text: str, tokenizer) -> list[int]:
    """Response ids end with EOS so the policy learns to stop (and the loss sees the stop)."""
    return encode_responses([text], tokenizer)[0]


def encode_responses(texts: list[str], tokenizer) -> list[list[int]]:
    """`encode_response` of each text, in one encode call."""
    if not texts:
        return []
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return [ids + eos for ids in encode_texts(texts, tokenizer, special_tokens=False)]


def tokenize_examples(examples: list[PreferenceExample], tokenizer,
                      cfg: DataConfig) -> list[tuple[TokenizedPair, Truncation] | BadRow]:
    """Encode and truncate each example, all prompts and all responses in one call each; an example with no usable
    response gets its BadRow in its place."""
    prompts = encode_prompts([example.prompt for example in examples], tokenizer, cfg.chat_template)
    responses = encode_responses([text for ex in examples for text in (ex.chosen, ex.rejected)], tokenizer)
    done = []
    for i, example in enumerate(examples):
        try:
            done.append(truncate_pair(prompts[i], responses[2 * i:2 * i + 2], cfg, example.source, example.row))
        except BadRow as bad:
            done.append(bad)
    return done


def truncate_pair(prompt: list[int], responses: list[list[int]], cfg: DataConfig, source: str,
                  row: int) -> tuple[TokenizedPair, Truncation]:
    """Cut the prompt from the left to data.max_prompt_length and the responses from the right to fit data.max_length."""
    truncation = Truncation()
    if cfg.max_prompt_length is not None and len(prompt) > cfg.max_prompt_length:
        prompt = prompt[len(prompt) - cfg.max_prompt_length:]
        truncation.prompt_cut = True
    _check_prompt_fits(source, row, prompt, cfg)
    room = cfg.max_length - len(prompt)
    cut = []
    for ids in responses:
        if len(ids) > room:
            ids = ids[:room]
            truncation.responses_cut += 1
        cut.append(ids)
    return TokenizedPair(prompt, cut[0], cut[1]), truncation


ID_FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids")


def pair_from_ids(raw: Mapping, row: int, source: str, cfg: DataConfig,
                  vocab_size: int) -> tuple[TokenizedPair, Truncation]:
    """A row of token ids (what a pipeline sampled) -> a checked, truncated pair; no re-tokenising."""
    ids = {}
    for field in ID_FIELDS:
        value = raw.get(field)
        if value is None:
            raise BadRow(MISSING_FIELD, source, row, field, "missing; a token-id row needs prompt_ids, chosen_ids "
                         "and rejected_ids (or give text fields and set data.format)")
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise BadRow(WRONG_TYPE, source, row, field, "expected a list of integer token ids; fix the value")
        outside = next((t for t in value if not 0 <= t < vocab_size), None)
        if outside is not None:
            raise BadRow(OUT_OF_VOCABULARY, source, row, field, f"token id {outside} is outside the tokenizer's "
                         f"vocabulary (0..{vocab_size - 1}): the ids were made with another tokenizer; set model.name "
                         "to the model that sampled them")
        ids[field] = value
    for field in ("chosen_ids", "rejected_ids"):
        if not ids[field]:
            raise BadRow(EMPTY_RESPONSE, source, row, field, f"empty response; give the row a non-empty {field}")
    if ids["chosen_ids"] == ids["rejected_ids"]:
        raise BadRow(IDENTICAL_RESPONSES, source, row, "rejected_ids", "identical to 'chosen_ids', so the pair "
                     "teaches nothing; give a different rejected response")
    return truncate_pair(ids["prompt_ids"], [ids["chosen_ids"], ids["rejected_ids"]], cfg, source, row)


def _check_prompt_fits(source: str, row: int, prompt: list[int], cfg: DataConfig) -> None:
    """A pair needs ≥ 1 prompt token (the first response token is predicted from it) and room
    for `min_response_tokens` (at least 1: an empty response carries no preference)."""
    if not prompt:
        raise BadRow(EMPTY_PROMPT, source, row, "prompt",
                     "the prompt has no tokens, so the first response token has nothing to be predicted "
                     "from; give the row a prompt, set data.chat_template=true, or raise data.max_prompt_length")
    needed = max(1, cfg.min_response_tokens)
    room = cfg.max_length - len(prompt)
    if room < needed:
        raise BadRow(NO_ROOM_FOR_RESPONSE, source, row, "prompt",
                     f"no room for the response: the prompt takes {len(prompt)} of data.max_length="
                     f"{cfg.max_length} tokens, leaving {max(room, 0)} (data.min_response_tokens={needed}); "
                     f"raise data.max_length or set data.max_prompt_length to at most {cfg.max_length - needed}")
