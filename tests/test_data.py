"""rayalign.data: forms, bad rows, truncation, masking, readers, and the real HH-RLHF sample."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayalign.config import DataConfig
from rayalign.data import (
    attach_marks,
    collate_pairs,
    encode_prompt,
    encode_response,
    fingerprint,
    iter_rows,
    normalise,
    prepare_data,
)
from rayalign.data.tokenize import TokenizedPair
from rayalign.errors import DataError
from rayalign.models import load_tokenizer

HH_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base.jsonl.gz"
STANDARD_ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A fish."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-llama")


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped as JSON), str (written as the line) or bytes (written raw)."""
    lines = [row if isinstance(row, bytes) else
             (row if isinstance(row, str) else json.dumps(row)).encode() for row in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------- forms

def test_standard_form():
    example = normalise({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}, 1, "f.jsonl")
    assert example.prompt == [user("What is 2+2?")]
    assert (example.chosen, example.rejected, example.row, example.source) == ("4", "5", 1, "f.jsonl")


def test_conversational_form_with_explicit_prompt():
    raw = {"prompt": [{"role": "system", "content": "Be brief."}, user("Capital of France?")],
           "chosen": [assistant("Paris.")], "rejected": [assistant("Lyon.")]}
    example = normalise(raw, 1, "f")
    assert example.prompt == [{"role": "system", "content": "Be brief."}, user("Capital of France?")]
    assert (example.chosen, example.rejected) == ("Paris.", "Lyon.")


def test_conversational_form_with_implicit_prompt():
    lead = [user("Hi"), assistant("Hello!"), user("Capital of France?")]
    raw = {"chosen": lead + [assistant("Paris.")], "rejected": lead + [assistant("Rome.")]}
    example = normalise(raw, 1, "f")
    assert example.prompt == lead
    assert (example.chosen, example.rejected) == ("Paris.", "Rome.")


def test_hh_rlhf_transcript():
    dialogue = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."
    raw = {"chosen": dialogue + "\n\nAssistant:  Why did the chicken cross the road? ",
           "rejected": dialogue + "\n\nAssistant: No."}
    example = normalise(raw, 1, "f")
    assert example.prompt == [user("Hi there"), assistant("Hello! How can I help?"), user("Tell me a joke.")]
    assert (example.chosen, example.rejected) == ("Why did the chicken cross the road?", "No.")


def test_ultrafeedback_binarized_row():
    raw = {"prompt": "Write a haiku.", "prompt_id": "abc123",
           "chosen": [user("Write a haiku."), assistant("Old pond, frog jumps in.")],
           "rejected": [user("Write a haiku."), assistant("Haikus are poems.")],
           "messages": [user("Write a haiku."), assistant("Old pond, frog jumps in.")],
           "score_chosen": 8.0, "score_rejected": 3.5}
    example = normalise(raw, 1, "f")
    assert example.prompt == [user("Write a haiku.")]
    assert (example.chosen, example.rejected) == ("Old pond, frog jumps in.", "Haikus are poems.")


def test_explicit_format_overrides_detection():
    with pytest.raises(DataError, match="field 'prompt': missing"):
        normalise({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
                  1, "f", form="standard")


# ---------------------------------------------------------------- bad rows

HH_A = "\n\nHuman: Hi\n\nAssistant: Hello"
BAD_ROWS = [  # (line 3 of the file, reason, field, text the message must contain)
    ({"prompt": "q", "chosen": "a"}, "missing_field", "rejected", "missing; add the field"),
    ({"prompt": "q", "chosen": 5, "rejected": "b"}, "wrong_type", "chosen", "expected a string or a list"),
    ({"chosen": [{"role": "assistant"}], "rejected": [assistant("b")]}, "wrong_type", "chosen",
     "message 1 is not an object with string 'role' and 'content'"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "empty_response", "chosen",
     "empty response; give the row a non-empty chosen response or set data.on_bad_row=skip"),
    ({"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [user("b")]}, "empty_response",
     "rejected", "no assistant message at the end"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical_responses", "rejected",
     "identical to 'chosen'"),
    (b'{"prompt": "q", "chosen": "caf\xe9", "rejected": "b"}', "undecodable_text", "chosen",
     "undecodable text (not UTF-8"),
    ('{"prompt": "q", "chosen": "\\ud800", "rejected": "b"}', "undecodable_text", "chosen",
     "undecodable text (a lone UTF-16 surrogate"),
    ('{"prompt": "q", "chosen": ', "invalid_json", None, "not valid JSON"),
    ('["q", "a", "b"]', "invalid_json", None, "the row is a JSON list, not an object"),
    ({"chosen": HH_A + "\n\nAssistant: x", "rejected": "\n\nHuman: Bye\n\nAssistant: y"}, "prompt_mismatch",
     "rejected", "differs from that of 'chosen'"),
    ({"chosen": "plain a", "rejected": "plain b"}, "not_a_transcript", "chosen", "add a 'prompt' field"),
    ({"prompt": "word " * 80, "chosen": "a", "rejected": "b"}, "no_room_for_response", "prompt",
     "raise data.max_length or set data.max_prompt_length to at most 39"),
    # token-id rows (what pipelines write)
    ({"chosen_ids": [5], "rejected_ids": [6]}, "missing_field", "prompt_ids", "missing; a token-id row needs"),
    ({"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": "4 5"}, "wrong_type", "rejected_ids",
     "expected a list of integer token ids"),
    ({"prompt_ids": [1, 2], "chosen_ids": [3, 10**9], "rejected_ids": [4]}, "out_of_vocabulary", "chosen_ids",
     "token id 1000000000 is outside the tokenizer's vocabulary"),
    ({"prompt_ids": [1, 2], "chosen_ids": [], "rejected_ids": [4]}, "empty_response", "chosen_ids",
     "empty response"),
    ({"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [3, 4]}, "identical_responses", "rejected_ids",
     "identical to 'chosen_ids'"),
]


def bad_file(tmp_path: Path, bad_row) -> Path:
    """A good row, a blank line (still counted), the bad row on line 3, another good row."""
    return write_jsonl(tmp_path / "prefs.jsonl", [STANDARD_ROWS[0], "", bad_row, STANDARD_ROWS[1]])


def bad_row_config(path: Path, **overrides) -> DataConfig:
    return DataConfig(path=str(path), max_length=40, max_prompt_length=None, **overrides)


@pytest.mark.parametrize("bad_row, reason, field, text", BAD_ROWS, ids=[case[1] for case in BAD_ROWS])
def test_bad_row_stops_with_one_line(tmp_path, tokenizer, bad_row, reason, field, text):
    path = bad_file(tmp_path, bad_row)
    with pytest.raises(DataError) as caught:
        prepare_data(bad_row_config(path), tokenizer)
    message = str(caught.value)
    where = f"{path}, row 3" + (f", field '{field}'" if field else "")
    assert message.startswith(where + ": "), message
    assert text in message and "\n" not in message
    assert message.endswith("or set data.on_bad_row=skip")
    assert caught.value.reason == reason


@pytest.mark.parametrize("bad_row, reason, field, text", BAD_ROWS, ids=[case[1] for case in BAD_ROWS])
def test_bad_row_is_skipped_and_counted(tmp_path, tokenizer, bad_row, reason, field, text):
    prepared = prepare_data(bad_row_config(bad_file(tmp_path, bad_row), on_bad_row="skip"), tokenizer)
    assert prepared.stats["bad_rows"] == {reason: 1}
    assert (prepared.stats["rows_read"], prepared.stats["rows_used"]) == (3, 2)
    good = [encode_response(row["chosen"], tokenizer) for row in STANDARD_ROWS[:2]]
    assert [pair.chosen_ids for pair in prepared.pairs] == good


def test_token_id_rows_train_on_their_ids_without_re_tokenising(tmp_path, tokenizer):
    """Ids are taken as sampled: no EOS appended to a response that has none (cut off by the token budget),
    the EOS of a finished one kept, the text ignored, and truncation as for text rows."""
    eos = tokenizer.eos_token_id
    truncated, finished = [310, 311, 312], [410, 411, eos]
    rows = [{"prompt": "shown, not used", "chosen": "x", "rejected": "y", "prompt_ids": [1, 2, 3],
             "chosen_ids": finished, "rejected_ids": truncated},
            {"prompt_ids": list(range(20, 30)), "chosen_ids": list(range(40, 52)), "rejected_ids": [7, eos]}]
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    prepared = prepare_data(DataConfig(path=str(path), max_length=16, max_prompt_length=6), tokenizer)
    first, second = prepared.pairs
    assert (first.prompt_ids, first.chosen_ids, first.rejected_ids) == ([1, 2, 3], finished, truncated)
    assert second.prompt_ids == list(range(24, 30))  # prompt cut from the left to 6 tokens
    assert second.chosen_ids == list(range(40, 50))  # response cut from the right to the 10 left
    assert prepared.stats["truncated_prompts"] == 1 and prepared.stats["truncated_responses"] == 1
    as_text = prepare_data(DataConfig(path=str(path), format="standard", limit=1, max_length=64), tokenizer)
    assert as_text.pairs[0].chosen_ids == encode_response("x", tokenizer)  # format=standard reads the text


def test_empty_prompt_without_template_is_bad(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"row 1, field 'prompt': the prompt has no tokens"):
        prepare_data(DataConfig(path=str(path), chat_template=False), tokenizer)


def test_limit_keeps_first_good_rows(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [STANDARD_ROWS[0], {"prompt": "q"}, *STANDARD_ROWS[1:]])
    prepared = prepare_data(DataConfig(path=str(path), limit=2, on_bad_row="skip"), tokenizer)
    assert [pair.rejected_ids for pair in prepared.pairs] == [
        encode_response(row["rejected"], tokenizer) for row in STANDARD_ROWS[:2]]
    assert prepared.stats["rows_read"] == 3 and prepared.stats["bad_rows"] == {"missing_field": 1}


# ---------------------------------------------------------------- tokenisation, truncation, masking

def test_prompt_uses_chat_template_or_plain_text(tokenizer):
    messages = [user("Hi"), assistant("Hello"), user("Bye")]
    templated = tokenizer.decode(encode_prompt(messages, tokenizer, chat_template=True))
    assert templated.endswith("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(encode_prompt(messages, tokenizer, chat_template=False)) == "Hi\n\nHello\n\nBye"
    assert encode_response("Hello", tokenizer)[-1] == tokenizer.eos_token_id


def test_truncation_cuts_prompt_left_and_response_right(tmp_path, tokenizer):
    long_prompt = " ".join(f"word{i}" for i in range(40))
    long_answer = " ".join(f"answer{i}" for i in range(40))
    rows = [{"prompt": long_prompt, "chosen": long_answer, "rejected": "Short."}, STANDARD_ROWS[0]]
    full_prompt = encode_prompt([user(long_prompt)], tokenizer)
    full_answer = encode_response(long_answer, tokenizer)
    max_prompt, max_length = len(full_prompt) - 7, len(full_prompt) - 7 + 20
    cfg = DataConfig(path=str(write_jsonl(tmp_path / "t.jsonl", rows)), max_length=max_length,
                     max_prompt_length=max_prompt)
    prepared = prepare_data(cfg, tokenizer)
    cut = prepared.pairs[0]
    assert cut.prompt_ids == full_prompt[7:]
    assert cut.chosen_ids == full_answer[:20]
    assert cut.rejected_ids == encode_response("Short.", tokenizer)
    assert all(len(pair.prompt_ids) + len(response) <= max_length
               for pair in prepared.pairs for response in (pair.chosen_ids, pair.rejected_ids))
    assert (prepared.stats["truncated_prompts"], prepared.stats["truncated_responses"]) == (1, 1)
    assert prepared.pairs[1].prompt_ids == encode_prompt([user(STANDARD_ROWS[0]["prompt"])], tokenizer)


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_collate_scores_exactly_the_responses_each_in_its_own_context(tmp_path, tokenizer, shared_prompt):
    """For every scored token: the target is the response's token, and the tokens its source position sees
    (attention mask), in position order, are exactly prompt + the response's earlier tokens."""
    path = write_jsonl(tmp_path / "m.jsonl", STANDARD_ROWS[:2])
    prepared = prepare_data(DataConfig(path=str(path)), tokenizer)
    attach_marks(prepared.pairs, lambda c, r: ([i % 2 == 0 for i in range(len(c))], [True] * len(r)))
    batch = collate_pairs(prepared.pairs, pad_id=tokenizer.pad_token_id, shared_prompt=shared_prompt)
    texts = [row["chosen"] for row in STANDARD_ROWS[:2]] + [row["rejected"] for row in STANDARD_ROWS[:2]]
    responses = [pair.chosen_ids for pair in prepared.pairs] + [pair.rejected_ids for pair in prepared.pairs]
    prompts = [pair.prompt_ids for pair in prepared.pairs] * 2
    assert batch["response_mask"].shape == batch["marks"].shape == (4, max(map(len, responses)))
    ids, positions, mask = batch["input_ids"], batch["position_ids"], batch["attention_mask"]
    width, n = ids.shape[1], 0
    for r, (text, prompt, response) in enumerate(zip(texts, prompts, responses)):
        assert tokenizer.decode(response) == text + tokenizer.eos_token
        assert batch["lengths"][r] == len(response) == int(batch["response_mask"][r].sum())
        for k, token in enumerate(response):
            row, col = divmod(int(batch["sources"][n]), width)
            assert int(batch["targets"][n]) == token
            seen = (mask[row, 0, col] if mask.dim() == 4 else mask[row].bool() & (torch.arange(width) <= col))
            context = [int(t) for _, t in sorted(zip(positions[row][seen].tolist(), ids[row][seen].tolist()))]
            assert context == prompt + response[:k] and int(positions[row, col]) == len(prompt) + k - 1
            n += 1
    assert n == len(batch["targets"]) == len(batch["sources"])
    chosen_marks = batch["marks"][0][batch["response_mask"][0]].tolist()
    assert chosen_marks == [i % 2 == 0 for i in range(len(chosen_marks))]

def test_fingerprint_follows_every_token_and_boundary():
    pair = TokenizedPair([1, 2, 3], [4, 5], [6])
    assert fingerprint([pair]) == fingerprint([TokenizedPair([1, 2, 3], [4, 5], [6])])
    assert fingerprint([pair]) != fingerprint([TokenizedPair([1, 2, 3], [4, 9], [6])])
    assert fingerprint([pair]) != fingerprint([TokenizedPair([1, 2], [3, 4, 5], [6])])
    assert len(fingerprint([pair])) == 64


# ---------------------------------------------------------------- readers

def write_all_kinds(tmp_path: Path) -> list[Path]:
    table = pa.Table.from_pylist(STANDARD_ROWS)
    jsonl = write_jsonl(tmp_path / "d.jsonl", STANDARD_ROWS)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(jsonl.read_bytes()))
    (tmp_path / "d.json").write_text(json.dumps(STANDARD_ROWS))
    (tmp_path / "d.json.gz").write_bytes(gzip.compress((tmp_path / "d.json").read_bytes()))
    pq.write_table(table, tmp_path / "d.parquet")
    (tmp_path / "d.parquet.gz").write_bytes(gzip.compress((tmp_path / "d.parquet").read_bytes()))
    (tmp_path / "folder").mkdir()
    pq.write_table(table, tmp_path / "folder" / "train.parquet")
    names = ["d.jsonl", "d.jsonl.gz", "d.json", "d.json.gz", "d.parquet", "d.parquet.gz", "folder"]
    return [tmp_path / name for name in names]


def test_every_reader_gives_the_same_examples(tmp_path, tokenizer):
    expected = list(enumerate(STANDARD_ROWS, start=1))
    fingerprints = set()
    for path in write_all_kinds(tmp_path):
        rows = list(iter_rows(DataConfig(path=str(path))))
        assert rows == expected, path
        fingerprints.add(fingerprint(prepare_data(DataConfig(path=str(path)), tokenizer).pairs))
    assert len(fingerprints) == 1


def test_missing_file_and_unloadable_dataset_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^.*nope\.jsonl\.gz: no such file; check data\.path$"):
        iter_rows(DataConfig(path=str(tmp_path / "nope.jsonl.gz")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"could not load dataset '.*empty' \(split 'train'\): ") as caught:
        iter_rows(DataConfig(path=str(tmp_path / "empty")))
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="unsupported file type"):
        iter_rows(DataConfig(path=str(write_jsonl(tmp_path / "d.txt", STANDARD_ROWS))))


def test_json_file_must_hold_a_list(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": STANDARD_ROWS}))
    with pytest.raises(DataError, match="a .json data file must be a list of row objects"):
        list(iter_rows(DataConfig(path=str(tmp_path / "d.json"))))


def test_blank_lines_count_in_row_numbers(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", ["", STANDARD_ROWS[0], "   ", STANDARD_ROWS[1]])
    assert [number for number, _ in iter_rows(DataConfig(path=str(path)))] == [2, 4]


# ---------------------------------------------------------------- real data

def test_real_hh_rlhf_sample(tokenizer):
    if not HH_SAMPLE.is_file():
        pytest.skip(f"{HH_SAMPLE} is absent: ../shared/data not present on this machine")
    prepared = prepare_data(DataConfig(path=str(HH_SAMPLE), on_bad_row="skip"), tokenizer)
    stats = prepared.stats
    assert stats["rows_read"] == 1600
    assert stats["rows_used"] + sum(stats["bad_rows"].values()) == 1600 and stats["rows_used"] >= 1590
    with_prompt = tokenizer.apply_chat_template([user("x")], add_generation_prompt=True, tokenize=False)
    generation_prompt = with_prompt.removeprefix(
        tokenizer.apply_chat_template([user("x")], add_generation_prompt=False, tokenize=False))
    assert generation_prompt == "<|im_start|>assistant\n"
    tail = tokenizer.encode(generation_prompt, add_special_tokens=False)
    assert all(pair.prompt_ids[-len(tail):] == tail for pair in prepared.pairs)
    assert all(len(pair.prompt_ids) <= 256 and len(pair.prompt_ids) + len(pair.chosen_ids) <= 512
               for pair in prepared.pairs)


# ---------------------------------------------------------------- your column names, configs, data_dir, streaming

THEIR_COLUMNS = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}


def _theirs(row: dict) -> dict:
    return {THEIR_COLUMNS[key]: value for key, value in row.items()}


def test_columns_read_a_users_names_as_rayaligns(tmp_path, tokenizer):
    ours = write_jsonl(tmp_path / "ours.jsonl", STANDARD_ROWS)
    theirs = write_jsonl(tmp_path / "theirs.jsonl", [{**_theirs(row), "score": 1} for row in STANDARD_ROWS])
    expected = prepare_data(DataConfig(path=str(ours)), tokenizer)
    mapped = prepare_data(DataConfig(path=str(theirs), columns=THEIR_COLUMNS), tokenizer)
    assert fingerprint(mapped.pairs) == fingerprint(expected.pairs) and len(mapped.pairs) == 3
    with pytest.raises(DataError, match="missing"):  # without the mapping the rows lack rayalign's fields
        prepare_data(DataConfig(path=str(theirs)), tokenizer)


def test_a_bad_row_in_a_mapped_column_names_the_users_column(tmp_path, tokenizer):
    rows = [_theirs(STANDARD_ROWS[0]), _theirs({**STANDARD_ROWS[1], "rejected": STANDARD_ROWS[1]["chosen"]})]
    path = write_jsonl(tmp_path / "theirs.jsonl", rows)
    with pytest.raises(DataError) as caught:
        prepare_data(DataConfig(path=str(path), columns=THEIR_COLUMNS), tokenizer)
    assert str(caught.value).startswith(f"{path}, row 2, field 'response_k (data.columns: rejected)': identical to "
                                        "'chosen'")


def _dataset_folder(root: Path) -> Path:
    """A hub-layout dataset folder: two configs (README metadata) in two data directories."""
    for name, rows in (("harmless", STANDARD_ROWS[:2]), ("helpful", STANDARD_ROWS[2:])):
        (root / name).mkdir(parents=True)
        write_jsonl(root / name / "train.jsonl", rows)
    (root / "README.md").write_text("---\nconfigs:\n- config_name: harmless\n  data_files: harmless/*.jsonl\n"
                                    "- config_name: helpful\n  data_files: helpful/*.jsonl\n---\n")
    return root


def test_a_datasets_config_name_and_data_dir_choose_the_rows(tmp_path):
    folder = str(_dataset_folder(tmp_path / "hub"))
    by_name = [row for _, row in iter_rows(DataConfig(path=folder, name="helpful"))]
    by_dir = [row for _, row in iter_rows(DataConfig(path=folder, data_dir="harmless"))]
    assert by_name == STANDARD_ROWS[2:] and by_dir == STANDARD_ROWS[:2]
    with pytest.raises(DataError, match="could not load dataset .* check data.path, data.split, data.name"):
        iter_rows(DataConfig(path=folder, name="no_such_config"))


def test_a_limit_streams_the_dataset_and_reads_no_further(tmp_path, tokenizer):
    """The split's second file is not JSON: the whole split cannot be loaded, but 2 rows of the first can."""
    folder = tmp_path / "streamed"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "train-0.jsonl", STANDARD_ROWS)
    (folder / "data" / "train-1.jsonl").write_text("this is not json\n")
    limited = prepare_data(DataConfig(path=str(folder), limit=2), tokenizer)
    assert len(limited.pairs) == 2 and limited.stats["rows_read"] == 2
    with pytest.raises(DataError, match="could not"):
        prepare_data(DataConfig(path=str(folder)), tokenizer)


# ---------------------------------------------------------------- batched tokenisation, the cache of a file's pairs

def _one_by_one(example, tokenizer, chat_template: bool) -> tuple[list[int], list[int], list[int]]:
    """transformers' own per-text calls: what the batched path must equal."""
    if chat_template:
        prompt = tokenizer.apply_chat_template(example.prompt, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    else:
        prompt = tokenizer.encode("\n\n".join(m["content"] for m in example.prompt), add_special_tokens=True)
    return prompt, *[tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
                     for text in (example.chosen, example.rejected)]


@pytest.mark.parametrize("chat_template", [True, False])
def test_batched_tokenisation_gives_the_ids_of_one_text_at_a_time(tmp_path, tokenizer, chat_template):
    rows = [*STANDARD_ROWS, {"prompt": [user("Hi"), assistant("Hello"), user("Long é ü 漢字 ?")],
                             "chosen": [assistant("  spaced  ")], "rejected": [assistant("x" * 50)]}]
    if HH_SAMPLE.is_file():
        with gzip.open(HH_SAMPLE, "rt") as handle:
            rows += [json.loads(line) for _, line in zip(range(200), handle)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = DataConfig(path=str(path), chat_template=chat_template, max_length=4096, max_prompt_length=None,
                     on_bad_row="skip")
    prepared = prepare_data(cfg, tokenizer)
    examples = [normalise(raw, row, str(path), "auto") for row, raw in iter_rows(cfg)
                if not _is_bad(raw, row, str(path))]
    assert len(prepared.pairs) == len(examples) >= 4
    for pair, example in zip(prepared.pairs, examples):
        assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids) == _one_by_one(example, tokenizer, chat_template)


def _is_bad(raw, row, path) -> bool:
    from rayalign.data import BadRow

    try:
        normalise(raw, row, path, "auto")
    except BadRow:
        return True
    return False


def test_a_files_pairs_come_from_the_cache_the_second_time(tmp_path, tokenizer, monkeypatch):
    from rayalign.data import prepare

    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(tmp_path / "p.jsonl", [*STANDARD_ROWS, {"prompt": "q"}])
    cfg = DataConfig(path=str(path), on_bad_row="skip")
    first = prepare_data(cfg, tokenizer)

    def no_tokenising(*args):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(prepare, "tokenize_examples", no_tokenising)
    again = prepare_data(cfg, tokenizer)
    assert [vars(p) for p in again.pairs] == [vars(p) for p in first.pairs] and again.stats == first.stats
    assert again.stats["bad_rows"] == {"missing_field": 1} and len(again.pairs) == 3
    monkeypatch.undo()
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    shorter = prepare_data(DataConfig(path=str(path), on_bad_row="skip", max_length=3), tokenizer)  # a setting
    assert all(len(p.prompt_ids) + len(p.chosen_ids) <= 3 for p in shorter.pairs)
    write_jsonl(path, STANDARD_ROWS[:2])  # the file's bytes
    assert len(prepare_data(cfg, tokenizer).pairs) == 2
    assert len(list((tmp_path / "cache" / "data").glob("*.parquet"))) == 3


def test_a_limit_reads_on_past_rows_that_fail_tokenising(tmp_path, tokenizer):
    """Rows are checked, then tokenised in chunks: a row that has no room for its response after tokenising is
    replaced by the next one, and the reading stops there."""
    too_long = {"prompt": " ".join(["word"] * 300), "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "p.jsonl", [STANDARD_ROWS[0], too_long, *STANDARD_ROWS[1:]])
    cfg = DataConfig(path=str(path), limit=2, on_bad_row="skip", max_length=64, max_prompt_length=None)
    prepared = prepare_data(cfg, tokenizer)
    assert prepared.stats["rows_read"] == 3 and prepared.stats["bad_rows"] == {"no_room_for_response": 1}
    assert [p.chosen_ids for p in prepared.pairs] == [encode_response(r["chosen"], tokenizer)
                                                      for r in STANDARD_ROWS[:2]]


# ---------------------------------------------------------------- data.mix

def _tagged_rows(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag} question {i}", "chosen": f"{tag} good {i}", "rejected": f"{tag} bad {i}"}
            for i in range(n)]


def _sources_of(prepared, tokenizer) -> list[str]:
    return [tokenizer.decode(pair.chosen_ids, skip_special_tokens=True).split()[0] for pair in prepared.pairs]


def test_a_mix_draws_rows_by_weight_seeded_and_counts_them(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", _tagged_rows("alpha", 2000))
    b = write_jsonl(tmp_path / "b.jsonl", _tagged_rows("beta", 2000))
    mix = [{"path": str(a), "weight": 3.0}, {"path": str(b), "weight": 1.0}]
    first = prepare_data(DataConfig(mix=mix, limit=1000), tokenizer)
    counts = first.stats["pairs_by_source"]
    assert counts[str(a)] + counts[str(b)] == 1000 == first.stats["rows_read"]
    assert abs(counts[str(a)] - 750) < 4 * (1000 * 0.75 * 0.25) ** 0.5  # binomial, 4 standard deviations
    order = _sources_of(first, tokenizer)
    assert order.count("alpha") == counts[str(a)]
    alphas = [pair.chosen_ids for pair, tag in zip(first.pairs, order) if tag == "alpha"]
    assert alphas[:3] == [encode_response(f"alpha good {i}", tokenizer) for i in range(3)]  # each file in its order
    assert _sources_of(prepare_data(DataConfig(mix=mix, limit=1000), tokenizer), tokenizer) == order  # seeded
    assert _sources_of(prepare_data(DataConfig(mix=mix, limit=1000, mix_seed=1), tokenizer), tokenizer) != order


def test_a_mix_stops_when_a_source_runs_out(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", _tagged_rows("alpha", 50))
    b = write_jsonl(tmp_path / "b.jsonl", _tagged_rows("beta", 5000))
    prepared = prepare_data(DataConfig(mix=[{"path": str(a)}, {"path": str(b)}]), tokenizer)
    counts = prepared.stats["pairs_by_source"]
    assert counts[str(a)] == 50 and 20 < counts[str(b)] < 100  # the shares hold: no tail of b alone


def test_a_bad_row_of_a_mixed_source_names_its_file_row_and_column(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", _tagged_rows("alpha", 20))
    theirs = [_theirs(row) for row in _tagged_rows("beta", 20)]
    theirs[6]["response_k"] = theirs[6]["response_j"]
    b = write_jsonl(tmp_path / "b.jsonl", theirs)
    mix = [{"path": str(a)}, {"path": str(b), "columns": THEIR_COLUMNS}]
    with pytest.raises(DataError) as error:
        prepare_data(DataConfig(mix=mix), tokenizer)
    assert str(error.value).startswith(f"{b}, row 7, field 'response_k (data.columns: rejected)': identical")


def test_ultrafeedback_saved_to_disk_and_hh_rlhf_by_data_dir_mixed_in_a_run(tmp_path):
    """The issue's case: a `save_to_disk` UltraFeedback-format dataset and a hub-layout HH-RLHF folder read with
    data.data_dir, mixed by weight in `rayalign train`; the summary counts each source's pairs."""
    import subprocess
    import sys

    import datasets

    from tests.conftest import REPO

    def uf_row(i):
        return {"prompt": f"uf {i}?", "chosen": [user(f"uf {i}?"), assistant(f"yes {i}")],
                "rejected": [user(f"uf {i}?"), assistant(f"no {i}")], "score_chosen": 8.0, "score_rejected": 2.0}

    uf = tmp_path / "uf"
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list([uf_row(i) for i in range(40)])}).save_to_disk(uf)
    hh = tmp_path / "hh"
    (hh / "harmless-base").mkdir(parents=True)
    write_jsonl(hh / "harmless-base" / "train.jsonl",
                [{"chosen": f"\n\nHuman: hh {i}?\n\nAssistant: fine {i}",
                  "rejected": f"\n\nHuman: hh {i}?\n\nAssistant: bad {i}"} for i in range(40)])
    (hh / "other").mkdir()
    (hh / "other" / "train.jsonl").write_text("not json\n")  # data_dir keeps this out
    mix = (f"data.mix=[{{path: {uf}, split: train_prefs, weight: 1}}, "
           f"{{path: {hh}, data_dir: harmless-base, weight: 1}}]")
    done = subprocess.run([str(Path(sys.executable).parent / "rayalign"), "train", "jobs/dpo_quickstart.yaml",
                           "data.path=", mix, "data.limit=24", "model.name=tiny-llama", "train.max_steps=2",
                           "tracking.wandb=disabled", "name=mixed", f"output_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "mixed" / "summary.json").read_text())["data"]
    counts = data["pairs_by_source"]
    assert set(counts) == {str(uf), str(hh)} and sum(counts.values()) == 24 == data["rows_used"]
    assert min(counts.values()) >= 4


# ---------------------------------------------------------------- held-out pairs for evaluation during training

def _ids(pairs) -> list[tuple]:
    return [tuple(p.chosen_ids) for p in pairs]


def test_an_eval_fraction_is_held_out_of_training_seeded(tmp_path, tokenizer):
    from rayalign.data.prepare import hold_out

    path = write_jsonl(tmp_path / "p.jsonl", _tagged_rows("alpha", 40))
    cfg = DataConfig(path=str(path), eval_fraction=0.25)
    everything = _ids(prepare_data(DataConfig(path=str(path)), tokenizer).pairs)
    prepared = prepare_data(cfg, tokenizer)
    hold_out(cfg, tokenizer, prepared, seed=3)
    held, trained = _ids(prepared.eval_pairs), _ids(prepared.pairs)
    assert len(held) == 10 and len(trained) == 30 and prepared.stats["eval_pairs"] == 10
    assert sorted(held + trained) == sorted(everything) and not set(held) & set(trained)
    assert held == [pair for pair in everything if pair in set(held)]  # in file order
    again = prepare_data(cfg, tokenizer)
    hold_out(cfg, tokenizer, again, seed=3)
    other = prepare_data(cfg, tokenizer)
    hold_out(cfg, tokenizer, other, seed=4)
    assert _ids(again.eval_pairs) == held and _ids(other.eval_pairs) != held


def test_an_eval_split_reads_that_split_with_the_same_settings(tmp_path, tokenizer):
    from rayalign.data.prepare import hold_out

    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "train.jsonl", _tagged_rows("alpha", 6))
    write_jsonl(folder / "data" / "test.jsonl", _tagged_rows("beta", 3))
    cfg = DataConfig(path=str(folder), eval_split="test", limit=4)
    prepared = prepare_data(cfg, tokenizer)
    hold_out(cfg, tokenizer, prepared, seed=0)
    assert len(prepared.pairs) == 4  # the limit is the training's
    assert _ids(prepared.eval_pairs) == [tuple(encode_response(f"beta good {i}", tokenizer)) for i in range(3)]
    with pytest.raises(ValueError, match="one of data.eval_path, data.eval_split and data.eval_fraction"):
        DataConfig(path=str(folder), eval_split="test", eval_fraction=0.1)


def test_a_path_pattern_reads_each_matching_file_in_name_order_and_names_the_file_of_a_bad_row(tmp_path, tokenizer):
    write_jsonl(tmp_path / "part-2.jsonl", _tagged_rows("beta", 2))
    write_jsonl(tmp_path / "part-1.jsonl", _tagged_rows("alpha", 3))
    write_jsonl(tmp_path / "other.jsonl", _tagged_rows("gamma", 4))  # not matched
    prepared = prepare_data(DataConfig(path=str(tmp_path / "part-*.jsonl")), tokenizer)
    assert _sources_of(prepared, tokenizer) == ["alpha"] * 3 + ["beta"] * 2 and prepared.stats["rows_read"] == 5
    bad = _tagged_rows("beta", 2)
    bad[1]["rejected"] = bad[1]["chosen"]
    write_jsonl(tmp_path / "part-2.jsonl", bad)
    with pytest.raises(DataError) as error:
        prepare_data(DataConfig(path=str(tmp_path / "part-*.jsonl")), tokenizer)
    assert str(error.value).startswith(f"{tmp_path / 'part-2.jsonl'}, row 2, field 'rejected': identical")
    with pytest.raises(DataError, match="no file matches this pattern"):
        prepare_data(DataConfig(path=str(tmp_path / "nothing-*.jsonl")), tokenizer)


def test_column_maps_name_only_rayaligns_fields_wherever_they_are_given():
    from rayalign import config
    from rayalign.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.mix: the columns of a.jsonl maps rayalign's prompt, chosen, "
                                          r"rejected to your column names; foo is not one of them"):
        config.build({"data": {"mix": [{"path": "a.jsonl", "columns": {"foo": "x"}}]}})
    with pytest.raises(ConfigError, match="data.columns maps .* rejected"):
        config.build({"data": {"path": "a.jsonl", "columns": {"answer": "x"}}})
    with pytest.raises(ConfigError, match="prompts.columns maps rayalign's prompt, chosen to .*; rejected is not"):
        config.build({"prompts": {"columns": {"rejected": "x"}}})


def test_too_few_pairs_from_a_mix_names_the_mix(tmp_path):
    from rayalign import config
    from rayalign.errors import ConfigError
    from rayalign.train.driver import prepare_pairs

    a = write_jsonl(tmp_path / "a.jsonl", _tagged_rows("alpha", 2))
    cfg = config.build({"model": {"name": "tiny-llama"}, "train": {"batch_size": 4, "micro_batch_size": 4},
                        "data": {"mix": [{"path": str(a)}]}})
    with pytest.raises(ConfigError, match=r"^data.mix: 2 usable pairs, fewer than train.batch_size \(4\)"):
        prepare_pairs(cfg)
