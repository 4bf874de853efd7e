"""The discriminator: Bradley–Terry training learns a synthetic preference, save/load, Serve over HTTP.

The learnable preference: word-collector responses, the one with more target words preferred.
The default tests use the tiny-llama backbone (on 2 busy cores minilm trains ~4x slower);
minilm gets a round-trip test here and learns on real data in the slow HH-RLHF test.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request

import pytest
import torch

from rayalign.errors import RayAlignError
from rayalign.scoring.discriminator import Discriminator, fit_bradley_terry_head, minilm_path
from rayalign.tasks import word_collector
from tests.conftest import free_port

FILLER = ("the", "a", "it", "is", "good", "nice", "try", "then", "slowly", "well", "now", "more")


def word_pairs(split: str, n: int, seed: int) -> list[dict]:
    """Chosen: 4 target words + 4 filler words; rejected: 8 filler words. Same prompts as the task."""
    rng = random.Random(seed)
    pairs = []
    for prompt in word_collector.TASK.prompts(split, n, seed):
        chosen = rng.sample(word_collector.WORDS, 4) + rng.sample(FILLER, 4)
        rng.shuffle(chosen)
        pairs.append({"prompt": prompt, "chosen": " ".join(chosen), "rejected": " ".join(rng.sample(FILLER, 8))})
    return pairs


@pytest.fixture(scope="module")
def trained():
    model = Discriminator(backbone="tiny-llama", max_length=64, epochs=3, batch_size=16, seed=0)
    held_out = word_pairs("held_out", 32, seed=1)
    before = model.accuracy(held_out)
    result = model.update(word_pairs("train", 64, seed=0))
    return model, held_out, before, result


def test_bradley_terry_loss_falls_and_accuracy_beats_chance(trained):
    model, held_out, before, result = trained
    assert result["steps"] == 3 * 4
    assert result["loss_last_epoch"] < 0.7 * result["loss_first_epoch"]
    after = model.accuracy(held_out)
    assert after >= 0.8, f"held-out accuracy {after} (before training {before})"
    assert after > before


def test_update_is_incremental_and_seeded(trained):
    model = trained[0]
    steps_before = max(float(state["step"]) for state in model.optimizer.state.values())
    model.update(word_pairs("train", 16, seed=5), epochs=1)
    assert max(float(state["step"]) for state in model.optimizer.state.values()) == steps_before + 1  # AdamW kept
    a, b = (Discriminator(backbone="tiny-llama", max_length=64, seed=3) for _ in range(2))
    pairs = word_pairs("train", 16, seed=2)
    a.update(pairs, epochs=1), b.update(pairs, epochs=1)
    assert a.score(["p"], ["data"]) == pytest.approx(b.score(["p"], ["data"]), abs=1e-6)


def test_save_and_load_round_trip_without_pickles(trained, tmp_path):
    model, held_out, _, _ = trained
    model.save(tmp_path / "disc")
    files = {p.name for p in (tmp_path / "disc").rglob("*") if p.is_file()}
    assert {"discriminator.json", "head.safetensors", "model.safetensors"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in files)
    loaded = Discriminator.load(tmp_path / "disc")
    prompts, responses = [p["prompt"] for p in held_out[:4]], [p["chosen"] for p in held_out[:4]]
    assert loaded.score(prompts, responses) == pytest.approx(model.score(prompts, responses), abs=1e-5)
    with pytest.raises(RayAlignError, match="not a discriminator checkpoint"):
        Discriminator.load(tmp_path)


def test_a_copy_trains_exactly_as_its_saved_and_loaded_self(trained, tmp_path):
    """`copy` (what a Serve replica trains each round) is `load` of `save` without the disk: a fresh AdamW, the
    same update count, the same weights after the same pairs."""
    model = trained[0]
    pairs = word_pairs("train", 16, seed=7)
    twin, loaded = model.copy(), Discriminator.load(model.save(tmp_path / "disc"))
    assert not twin.optimizer.state and twin.updates == loaded.updates == model.updates
    twin.update(pairs, epochs=2), loaded.update(pairs, epochs=2)
    prompts, responses = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    assert twin.score(prompts, responses) == pytest.approx(loaded.score(prompts, responses), abs=1e-6)
    assert twin.score(prompts, responses) != pytest.approx(model.score(prompts, responses), abs=1e-3)


def test_score_checks_lengths(trained):
    with pytest.raises(RayAlignError, match="1 prompts but 2 responses"):
        trained[0].score(["p"], ["a", "b"])


def test_minilm_backbone_mean_pooling_and_round_trip(tmp_path):
    assert (minilm_path() / "config.json").is_file()
    model = Discriminator(backbone="minilm", max_length=48, batch_size=8, seed=0)
    assert model.pooling == "response_mean"
    pairs = word_pairs("train", 8, seed=0)
    before = model.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    model.update(pairs, epochs=1)
    after = model.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    assert before != pytest.approx(after, abs=1e-4)
    loaded = Discriminator.load(model.save(tmp_path / "minilm"))
    assert loaded.pooling == "response_mean"
    assert loaded.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]) == pytest.approx(after, abs=1e-5)


def test_minilm_pools_the_response_tokens_only():
    model = Discriminator(backbone="minilm", max_length=48, seed=0)
    prompt, response = "Name a fruit that is yellow.", "A banana."
    batch = model._encode([prompt], [response])
    with torch.no_grad():
        hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                token_type_ids=batch["token_type_ids"]).last_hidden_state[0]
        response_rows = batch["token_type_ids"][0].bool()  # the response and its closing [SEP]
        expected = model.head(hidden[response_rows].mean(0)).item()
        prompt_too = model.head(hidden.mean(0)).item()
    assert response_rows.sum() == len(model.tokenizer(response, add_special_tokens=False)["input_ids"]) + 1
    assert model.score([prompt], [response]) == pytest.approx([expected], abs=1e-5)
    assert abs(expected - prompt_too) > 1e-4


def test_features_are_what_the_head_reads_and_stack_the_asked_layers():
    model = Discriminator(backbone="minilm", max_length=48, seed=0)
    prompts, responses = ["Name a fruit that is yellow."] * 2, ["A banana.", "A lemon, often sour."]
    last = model.features(prompts, responses)
    assert model.head(last).squeeze(-1).tolist() == pytest.approx(model.score(prompts, responses), abs=1e-5)
    blocks, width = model.backbone.config.num_hidden_layers, last.shape[1]
    stacked = Discriminator(backbone="minilm", max_length=48, pool_layers=[3, blocks]).features(prompts, responses)
    assert stacked.shape == (2, 2 * width)
    torch.testing.assert_close(stacked[:, width:], last, atol=1e-5, rtol=0)  # the last block is the default
    batch = model._encode(prompts[1:], responses[1:])
    with torch.no_grad():
        middle = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                token_type_ids=batch["token_type_ids"], output_hidden_states=True).hidden_states[3][0]
    by_hand = middle[batch["token_type_ids"][0].bool()].mean(0)
    torch.testing.assert_close(stacked[1, :width], by_hand, atol=1e-5, rtol=0)


def test_a_causal_lm_pools_the_response_at_the_asked_layers_and_round_trips(tmp_path):
    model = Discriminator(backbone="tiny-llama", max_length=64, pooling="response_mean", pool_layers=[1, 2], seed=0)
    prompt, response = "Name a fruit that is yellow.", "A banana."
    batch = model._encode([prompt], [response])
    with torch.no_grad():
        hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                output_hidden_states=True).hidden_states
    n_response = len(model.tokenizer(response, add_special_tokens=False)["input_ids"]) + 1  # and its <eos>
    rows = slice(len(batch["input_ids"][0]) - n_response, None)
    by_hand = torch.cat([hidden[1][0, rows].mean(0), hidden[2][0, rows].mean(0)])
    assert model.score([prompt], [response]) == pytest.approx([model.head(by_hand).item()], abs=1e-5)
    loaded = Discriminator.load(model.save(tmp_path / "pooled"))
    assert (loaded.pooling, loaded.layers) == ("response_mean", (1, 2))
    assert loaded.score([prompt], [response]) == pytest.approx(model.score([prompt], [response]), abs=1e-5)


def test_fit_head_on_frozen_features_learns_and_serves_what_it_fitted():
    model = Discriminator(backbone="tiny-llama", max_length=64, pooling="response_mean", pool_layers=[1, 2], seed=0)
    backbone_before = [p.clone() for p in model.backbone.parameters()]
    train, held_out = word_pairs("train", 64, seed=0), word_pairs("held_out", 32, seed=1)
    result = model.fit_head(train)
    assert result["train_accuracy"] == pytest.approx(model.accuracy(train))  # the fitted w, through score()
    assert model.accuracy(held_out) >= 0.9
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, model.backbone.parameters()))


def _curve_job(monkeypatch):
    import importlib.util
    from pathlib import Path

    jobs = Path(__file__).parents[1] / "jobs"
    monkeypatch.syspath_prepend(str(jobs))
    spec = importlib.util.spec_from_file_location("discriminator_curve", jobs / "discriminator_curve.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_learning_curve_head_and_extrapolation(monkeypatch):
    job = _curve_job(monkeypatch)
    # accuracy 0.5, 0.6, 0.7 at 2, 4, 8 pairs: +0.1 per doubling, so 0.8 at 16; a flat curve never gets there
    assert job.pairs_needed([2, 4, 8], [0.5, 0.6, 0.7], 0.8) == pytest.approx(16.0)
    assert job.pairs_needed([2, 4, 8], [0.6, 0.6, 0.6], 0.8) is None
    generator = torch.Generator().manual_seed(0)
    direction = torch.tensor([2.0, -1.0, 0.0, 0.0])
    diffs = torch.randn(400, 4, generator=generator)
    diffs = diffs * torch.where(diffs @ direction > 0, 1.0, -1.0).unsqueeze(1)  # every pair: w*·d > 0
    w = fit_bradley_terry_head(diffs[:300], job.cross_validated_lambda(diffs[:300]))
    assert job.accuracy(diffs[300:], w) > 0.95
    assert torch.nn.functional.cosine_similarity(w, direction, dim=0) > 0.9


def test_truncation_keeps_the_response_start_and_the_prompt_end(trained):
    model = trained[0]
    batch = model._encode(["x " * 500 + "LAST"], ["FIRST " + "y " * 500])
    ids = batch["input_ids"][0].tolist()
    text = model.tokenizer.decode(ids)
    assert len(ids) == 64 and "LAST" in text and "FIRST" in text and "y" in text


def _post(port: int, body, prefix: str = "") -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{prefix}/score", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_serve_scores_over_http_and_handle(trained, ray_local, tmp_path):
    from ray import serve

    from rayalign.scoring.serve import start

    model, held_out, _, _ = trained
    checkpoint = str(model.save(tmp_path / "disc"))
    port = free_port()
    try:
        handle = start(checkpoint, port=port, name="discriminator_test", num_cpus=0)
        prompts, responses = [p["prompt"] for p in held_out[:3]], [p["chosen"] for p in held_out[:3]]
        status, body = _post(port, {"prompts": prompts, "responses": responses})
        assert status == 200
        assert body["scores"] == pytest.approx(model.score(prompts, responses), abs=1e-4)
        assert _post(port, {"prompts": [], "responses": []}) == (200, {"scores": []})
        assert handle.score.remote(prompts[:1], responses[:1]).result() == pytest.approx(body["scores"][:1], abs=1e-4)
        malformed = [b"{not json", b"", {"prompts": ["a"]}, {"prompts": ["a"], "responses": ["a", "b"]},
                     {"prompts": [1], "responses": ["a"]}, {"prompts": "ab", "responses": "cd"}, [1, 2],
                     {"prompts": ["a"], "responses": ["b"], "extra": 1}]
        for body in malformed:
            status, message = _post(port, body)
            assert 400 <= status < 500 and message, (body, status)
        status, message = _post(port, {"prompts": ["a"], "responses": ["a", "b"]})
        assert "1 prompts but 2 responses" in message
        status, message = _post(port, {"prompts": ["a" * (1 << 20)], "responses": ["b"]})
        assert status == 413 and "1048576-byte limit" in message
    finally:
        serve.shutdown()


def test_more_pairs_than_one_request_holds_are_scored_whole_and_in_order(trained, ray_local, tmp_path):
    """More pairs than one request may hold (MAX_ITEMS) go as chunks in flight together: every score comes back, in
    order, equal to the model's own."""
    from rayalign.scoring.serve import MAX_ITEMS, DiscriminatorService

    model = trained[0]
    prompts = [f"Any advice on topic {i % 13}?" for i in range(MAX_ITEMS + 5)]
    responses = [" ".join(random.Random(i).sample(FILLER + word_collector.WORDS, 3)) for i in range(len(prompts))]
    service = DiscriminatorService(str(model.save(tmp_path / "d")), name="chunks", route_prefix="/chunks",
                                   port=free_port())
    try:
        served = service.score(prompts, responses)
        with pytest.raises(RayAlignError, match="5 prompts but 4 responses"):
            service.score(prompts[:5], responses[:4])
    finally:
        service.shutdown()
    assert served == pytest.approx(model.score(prompts, responses), abs=1e-5)


def test_service_starts_inside_a_tune_trials_placement_group(trained, ray_local, tmp_path):
    """A D2PO job in a sweep creates its service inside a trial: a one-bundle placement group whose tasks
    capture their children. Serve's controller must still start (outside it) and the service score."""
    from ray import serve
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    model, held_out, _, _ = trained
    checkpoint = str(model.save(tmp_path / "disc"))
    port = free_port()

    def trial() -> list[float]:
        from rayalign.scoring.serve import DiscriminatorService

        service = DiscriminatorService(checkpoint, name="discriminator_trial", route_prefix="/trial", port=port)
        return service.score([held_out[0]["prompt"]], [held_out[0]["chosen"]])

    group = placement_group([{"CPU": 0.01}])
    ray_local.get(group.ready())
    try:
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        scores = ray_local.get(ray_local.remote(trial).options(num_cpus=0.01, scheduling_strategy=strategy).remote())
        assert scores == pytest.approx(model.score([held_out[0]["prompt"]], [held_out[0]["chosen"]]), abs=1e-4)
    finally:
        serve.shutdown()
        remove_placement_group(group)


def test_accuracy_on_held_out_gold_pairs_rises_over_rounds():
    """D2PO's use: a few gold pairs per round, incremental updates; held-out accuracy climbs."""
    model = Discriminator(backbone="tiny-llama", max_length=64, epochs=3, batch_size=8, seed=4)
    held_out = word_pairs("held_out", 32, seed=1)
    gold = word_pairs("train", 32, seed=7)
    accuracy = [model.accuracy(held_out)]
    for start in range(0, 32, 8):
        model.update(gold[start:start + 8])
        accuracy.append(model.accuracy(held_out))
    assert accuracy[-1] >= 0.8 and accuracy[-1] > accuracy[0] + 0.2, accuracy
    assert max(accuracy[:2]) < accuracy[-1], accuracy


def test_serve_answers_every_request_while_it_swaps_weights(trained, ray_local, tmp_path):
    """The service's `swap` replaces the replica under load: every request gets a 200, scored by the old weights
    until the new ones serve, never anything else."""
    import threading

    from ray import serve

    from rayalign.scoring.serve import DiscriminatorService

    model = trained[0]
    old = str(model.save(tmp_path / "old"))
    new_model = Discriminator(backbone="tiny-llama", max_length=64, seed=11)  # an untrained head: other scores
    new = str(new_model.save(tmp_path / "new"))
    probe = {"prompts": ["Any advice?"], "responses": ["happy to help with your data"]}
    old_score, new_score = model.score(probe["prompts"], probe["responses"]), new_model.score(probe["prompts"],
                                                                                             probe["responses"])
    port = free_port()
    answers, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                answers.append(_post(port, probe, prefix="/disc"))
            except OSError as error:  # refused or timed out: a dropped request
                answers.append((repr(error), None))

    def wait_for(count: int):
        while len(answers) < count:
            time.sleep(0.05)

    try:
        service = DiscriminatorService(old, name="swap_test", route_prefix="/disc", port=port)
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_for(20)
        service.swap(new)
        wait_for(len(answers) + 20)
        stop.set()
        for thread in threads:
            thread.join()
        assert all(status == 200 for status, _ in answers), {status for status, _ in answers}
        scores = [body["scores"][0] for _, body in answers]
        assert all(s == pytest.approx(old_score[0], abs=1e-4) or s == pytest.approx(new_score[0], abs=1e-4)
                   for s in scores)
        assert scores[0] == pytest.approx(old_score[0], abs=1e-4) and scores[-1] == pytest.approx(new_score[0], abs=1e-4)
        assert service.score(probe["prompts"], probe["responses"]) == pytest.approx(new_score, abs=1e-4)
    finally:
        stop.set()
        serve.shutdown()


def _kill_replica_under_load(port: int, prefix: str, seconds_after_kill: float) -> tuple[list, int, int]:
    """8 clients post to `prefix`/score without pause; the model replica's process is SIGKILLed once 20 answers
    are in; `seconds_after_kill` later the clients stop. Returns (status, seconds, body) per request and the
    replica's pid before and after."""
    import os
    import signal
    import threading

    def pid() -> int:
        """The replica's pid, once one answers (within a minute)."""
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{prefix}/checkpoint", timeout=120) as response:
                    return json.loads(response.read())["replica_pid"]
            except urllib.error.HTTPError as error:
                assert error.code == 503, error.code
                time.sleep(1)
        raise AssertionError("the replica did not come back within a minute")

    answers, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            began = time.monotonic()
            status, body = _post(port, {"prompts": ["Any advice?"], "responses": ["collect your data"]}, prefix)
            answers.append((status, time.monotonic() - began, body))

    before = pid()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(answers) < 20:
        time.sleep(0.05)
    os.kill(before, signal.SIGKILL)
    time.sleep(seconds_after_kill)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    return answers, before, pid()


@pytest.mark.slow  # 35 s: a replica killed under load, then replaced; keeps the default suite under 15 min on 2 cores
def test_a_killed_replica_costs_requests_time_not_answers(trained, ray_local, tmp_path):
    """The model replica's process killed under load: every request is answered 200 (those in flight are
    resent to the replica Serve starts in its place), none waits past the gateway's limit, the replica is back.
    Without the gateway, Serve's proxy answers 500 to the requests in flight at the kill."""
    from ray import serve

    from rayalign.scoring.serve import DiscriminatorService
    from rayalign.serving import REPLICA_WAIT_S

    checkpoint = str(trained[0].save(tmp_path / "disc"))
    port = free_port()
    try:
        DiscriminatorService(checkpoint, name="kill_test", route_prefix="/disc", port=port)
        answers, before, after = _kill_replica_under_load(port, "/disc", seconds_after_kill=3)
        assert {status for status, _, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
        assert after != before
        assert max(seconds for _, seconds, _ in answers) < REPLICA_WAIT_S
        assert len(answers) > 28  # requests were answered after the kill, by the new replica
    finally:
        serve.shutdown()


@pytest.mark.slow  # 29 s: keeps the default suite under 15 min on a fresh clone (make test-slow runs it)
def test_the_replica_trains_itself_and_a_restarted_replica_serves_the_trained_model(trained, ray_local, tmp_path):
    """`update` trains in the model's replica (accuracies measured before training), which then serves the new
    weights from the same process; its checkpoint is the `latest` file's, which a replica SIGKILLed afterwards
    loads when Serve restarts it (not the deployed starting checkpoint)."""
    import os
    import signal

    from ray import serve

    from rayalign.scoring.serve import DiscriminatorService

    model = trained[0]
    start = str(model.save(tmp_path / "start"))
    pairs = word_pairs("train", 16, seed=9)
    prompts, responses = [p["prompt"] for p in pairs[:4]], [p["chosen"] for p in pairs[:4]]
    expected = model.copy()
    before_accuracy = expected.accuracy(pairs)
    expected.update(pairs)
    port = free_port()
    try:
        service = DiscriminatorService(start, name="update_test", route_prefix="/upd", port=port,
                                       latest=str(tmp_path / "latest.txt"))
        pid = service.handle.current_checkpoint.remote().result()["replica_pid"]
        metrics = service.update(pairs, [], str(tmp_path / "round_1"))
        assert metrics["disc/accuracy_new_gold"] == pytest.approx(before_accuracy)
        assert (tmp_path / "latest.txt").read_text() == str(tmp_path / "round_1")
        served = service.handle.current_checkpoint.remote().result()
        assert served == {"checkpoint": str(tmp_path / "round_1"), "replica_pid": pid}  # in place, no new replica
        assert service.score(prompts, responses) == pytest.approx(expected.score(prompts, responses), abs=1e-5)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                served = service.handle.current_checkpoint.remote().result(timeout_s=30)
                if served["replica_pid"] != pid:
                    break
            except Exception:  # noqa: BLE001 - the replica is down until Serve restarts it
                time.sleep(0.5)
        assert served["replica_pid"] != pid and served["checkpoint"] == str(tmp_path / "round_1")
        assert service.score(prompts, responses) == pytest.approx(expected.score(prompts, responses), abs=1e-5)
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_a_replica_that_does_not_come_back_in_time_is_a_503_with_a_message(trained, ray_local, tmp_path):
    """With a 1 s limit, the requests waiting on the killed replica's replacement (several seconds on CPU) get
    503 and what to do, after about 1 s; none gets a 500; later requests are answered again."""
    from ray import serve

    from rayalign.scoring.serve import build_app

    checkpoint = str(trained[0].save(tmp_path / "disc"))
    port = free_port()
    try:
        from rayalign.serving import start_serve

        start_serve("127.0.0.1", port)
        serve.run(build_app(checkpoint, num_cpus=0, wait_s=1.0), name="timeout_test", route_prefix="/t")
        answers, before, after = _kill_replica_under_load(port, "/t", seconds_after_kill=2)
        failed = [(status, seconds, body) for status, seconds, body in answers if status != 200]
        assert failed and {status for status, _, _ in failed} == {503}
        assert all("no replica answered within 1 s" in body and "retry" in body for _, _, body in failed)
        assert all(seconds < 5 for _, seconds, _ in failed)
        assert after != before and _post(port, {"prompts": ["p"], "responses": ["r"]}, "/t")[0] == 200  # it is back
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_minilm_learns_hh_rlhf_harmlessness(tmp_path):
    from conftest import hh_sample

    path = hh_sample()
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("discriminator_hh", Path(__file__).parents[1] / "jobs" /
                                                  "discriminator_hh.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    pairs, _ = job.load_pairs(str(path))
    random.Random(0).shuffle(pairs)
    model = Discriminator(backbone="minilm", max_length=128, epochs=1, seed=0)  # as jobs/discriminator_hh.py
    model.update(pairs[320:1600])
    assert model.accuracy(pairs[:320]) > 0.55  # measured: 0.591 (189 of 320), ~4 min on 2 quiet cores


@pytest.mark.slow
def test_serve_cli_prints_the_url_and_stops_on_ctrl_c(trained, tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    checkpoint = str(trained[0].save(tmp_path / "disc"))
    port = free_port()
    rayalign = str(Path(sys.executable).parent / "rayalign")
    proc = subprocess.Popen([rayalign, "serve", "discriminator", "--checkpoint", checkpoint, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert f"http://127.0.0.1:{port}/score" in proc.stdout.readline()
        status, body = _post(port, {"prompts": ["p"], "responses": ["data"]})
        assert status == 200 and len(body["scores"]) == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_hh_discriminator_job_writes_a_reward_model_that_judges(tmp_path):
    """jobs/discriminator_hh.py end to end on a slice of the HH-RLHF sample (tiny-llama backbone): its checkpoint
    loads as a reward model (what prompts.judge and eval.scorer take)."""
    import subprocess
    import sys

    from rayalign.scoring.reward_model import load_reward_model
    from tests.conftest import REPO, hh_sample

    data = hh_sample()
    done = subprocess.run([sys.executable, "jobs/discriminator_hh.py", "--data", str(data), "--train", "48",
                           "--held-out", "16", "--backbone", "tiny-llama", "--pool-layers", "1", "2",
                           "--out", str(tmp_path / "hh")], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "hh" / "summary.json").read_text())
    assert summary["train_pairs"] == 48 and summary["held_out_pairs"] == 16 and 0 <= summary["held_out_accuracy"] <= 1
    judge = load_reward_model(str(tmp_path / "hh" / "checkpoint"))
    assert len(judge.score(["Hi"], ["Hello!"])) == 1
