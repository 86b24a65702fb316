"""The quality benchmarks on the fixture text at toy scale: what they report must be what the runs measured
(a short run used to crash after training, and a report that disagrees with its runs would mislead)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from .conftest import CORPUS, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import copy_probe  # noqa: E402
import curriculum_stages  # noqa: E402
import sparse_copying  # noqa: E402


def run_script(name, *options, cwd):
    finished = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *map(str, options)], cwd=cwd,
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


@pytest.mark.slow
def test_a_run_shorter_than_one_evaluation_interval_reports_its_final_metrics(tmp_path):
    run_script("quality_wikitext.py", CORPUS, "--output_dir", tmp_path, "--max_steps", 2, "--eval_steps", 50,
               "--batch_size", 2, "--block_size", 32, "--held_out", 2, "--models", "study-serpent-slow", "study-mamba-4L",
               cwd=tmp_path)
    results = json.loads((tmp_path / "quality_wikitext.json").read_text())
    assert results["eval_articles"] == 2 and results["same_tokenizer"]
    for arm in ("study-serpent-slow", "study-mamba-4L"):
        measured = json.loads((tmp_path / arm / "eval_results.json").read_text())
        row = results["arms"][arm]
        assert row["final"]["top1_accuracy"]["mean"] == pytest.approx(measured["eval_top1_accuracy"])
        assert row["best"] == row["final"]  # no evaluation before the end: the best is the final one
        assert results["runs"][arm][0]["steps"] == 2


@pytest.mark.slow
def test_the_context_sweep_holds_tokens_per_step_and_its_positions_average_to_the_runs_loss(tmp_path):
    run_script("context_length.py", CORPUS, "--output_dir", tmp_path, "--block_sizes", 32, 64, "--tokens_per_step", 64,
               "--max_steps", 2, "--eval_steps", 1, "--held_out", 2, "--seeds", 0, "--arms", "study-serpent-slow",
               "study-mamba-4L", "--arm_steps", "study-serpent-slow=3", cwd=tmp_path)
    results = json.loads((tmp_path / "context_length.json").read_text())
    assert sorted(results["block_sizes"], key=int) == ["32", "64"]
    for block_size, arms in results["block_sizes"].items():
        for arm, row in arms.items():
            run = row["runs"][0]
            assert run["tokens_trained"] == run["steps"] * 64  # batch = tokens per step / block size
            assert run["steps"] == (3 if arm == "study-serpent-slow" else 2)
            buckets = run["positions"]["buckets"]
            assert buckets[-1]["last"] == int(block_size) - 1
            mean = sum(b["loss"] * b["tokens"] for b in buckets) / sum(b["tokens"] for b in buckets)
            assert mean == pytest.approx(run["final"]["loss"], rel=1e-4)  # the blocks the Trainer evaluated
            state = json.loads((tmp_path / f"block{block_size}" / arm / "seed0" / "trainer_state.json").read_text())
            runtime = [entry["train_runtime"] for entry in state["log_history"] if "train_runtime" in entry][-1]
            assert 0 < run["train_seconds"] < runtime  # the evaluations during training are not training time
            assert row["flops_per_token"] > 0
    assert (tmp_path / "context_length.png").stat().st_size > 0

    # A later sweep of another seed summarised with these runs, whose folders it does not read (--earlier_runs).
    later = tmp_path / "later"
    options = ["--output_dir", later, "--block_sizes", 32, "--tokens_per_step", 64, "--max_steps", 2, "--eval_steps", 1,
               "--held_out", 2, "--arms", "study-mamba-4L", "--earlier_runs", tmp_path / "context_length.json"]
    run_script("context_length.py", CORPUS, *options, "--seeds", 1, cwd=tmp_path)
    row = json.loads((later / "context_length.json").read_text())["block_sizes"]["32"]["study-mamba-4L"]
    first = results["block_sizes"]["32"]["study-mamba-4L"]["runs"][0]["final"]["top1_accuracy"]
    second = json.loads((later / "block32" / "study-mamba-4L" / "seed1" / "eval_results.json").read_text())
    assert [run["seed"] for run in row["runs"]] == [0, 1]
    assert row["top1"]["mean"] == pytest.approx((first + second["eval_top1_accuracy"]) / 2)
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "context_length.py"), str(CORPUS),
                            *map(str, options), "--seeds", "0"], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert again.returncode != 0 and "holds a seed of this sweep again" in again.stderr

    # The same runs read at four times their training block (context_extrapolation.py).
    output = tmp_path / "extrapolation" / "x.json"
    run_script("context_extrapolation.py", CORPUS, "--runs_dir", tmp_path, "--trained_block", 32, "--test_block", 128,
               "--held_out", 2, "--seeds", 0, "--arms", "study-serpent-slow", "study-mamba-4L", "--output", output,
               cwd=tmp_path)
    extrapolation = json.loads(output.read_text())
    assert extrapolation["buckets_upper"] == [16, 32, 64, 128]
    for arm, row in extrapolation["arms"].items():
        buckets = row["runs"]["0"]["buckets"]
        assert [b["name"] for b in buckets] == ["1-16", "17-32", "33-64", "65-127"]
        past = (buckets[2]["loss"] * buckets[2]["tokens"] + buckets[3]["loss"] * buckets[3]["tokens"]) / (
            buckets[2]["tokens"] + buckets[3]["tokens"])
        assert row["penalty"]["mean"] == pytest.approx(past - buckets[1]["loss"])
    assert output.with_suffix(".png").stat().st_size > 0


def test_extrapolation_buckets_split_at_the_training_length_and_double_past_it():
    import context_extrapolation

    assert context_extrapolation.buckets_for(1024, 4096) == [512, 1024, 2048, 4096]
    assert context_extrapolation.buckets_for(2048, 16384) == [1024, 2048, 4096, 8192, 16384]
    assert context_extrapolation.buckets_for(1024, 3000) == [512, 1024, 2048, 3000]


def test_a_copying_example_holds_its_content_in_order_after_the_marker():
    ids, labels, positions = sparse_copying.make_examples(5, 40, 3, 6, torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (5, 40 + 1 + 3)
    for row in range(5):
        content = ids[row, positions[row]]
        assert ((content >= sparse_copying.FIRST_CONTENT) & (content < sparse_copying.FIRST_CONTENT + 6)).all()
        body = ids[row, :40].clone()
        body[positions[row]] = sparse_copying.FILLER
        assert (body == sparse_copying.FILLER).all()  # everything else is filler
        assert ids[row, 40] == sparse_copying.MARKER
        assert torch.equal(ids[row, 41:], content) and torch.equal(labels[row, 41:], content)
        assert (labels[row, :41] == sparse_copying.IGNORE).all()  # only the copies are scored


def test_copy_accuracy_scores_the_copies_and_nothing_else():
    ids, labels, _ = sparse_copying.make_examples(4, 20, 2, 5, torch.Generator().manual_seed(1))

    class Copier(torch.nn.Module):
        """Certain of the true next token at the copy positions, of a wrong one wherever `wrong` is set."""

        def __init__(self, wrong):
            super().__init__()
            self.wrong, self.seen = wrong, 0

        def forward(self, input_ids):
            following = torch.roll(input_ids, -1, dims=1)
            wrong = self.wrong[self.seen:self.seen + len(input_ids)]  # the rows of this batch
            self.seen += len(input_ids)
            following[wrong] = sparse_copying.FILLER  # filler is never a right copy
            return SimpleNamespace(logits=torch.nn.functional.one_hot(following, 16).float())

    perfect = torch.zeros_like(ids, dtype=torch.bool)
    assert sparse_copying.copy_accuracy(Copier(perfect), ids, labels, 3) == (1.0, 1.0)
    one_wrong = perfect.clone()
    one_wrong[0, 20] = True  # the marker, which predicts the first copy of the first example
    assert sparse_copying.copy_accuracy(Copier(one_wrong), ids, labels, 3) == (7 / 8, 3 / 4)
    elsewhere = perfect.clone()
    elsewhere[:, :20] = True  # wrong on the filler, which is not scored
    assert sparse_copying.copy_accuracy(Copier(elsewhere), ids, labels, 3) == (1.0, 1.0)


def test_the_information_term_is_zero_exactly_when_delta_follows_unigram_surprisal_and_raises_a_rare_tokens_delta():
    ids = torch.tensor([[0, 0, 0, 5, 0, 0, 1], [0, 0, 4, 0, 0, 0, 1]])  # filler 0, a marker 1 per row, two rare tokens
    branches = {1: 0.25}  # branch 0 is the κ = 1 branch and is not charged
    counts = torch.bincount(ids.flatten()).double()
    surprisal = -torch.log(counts[ids] / ids.numel())
    share = surprisal / surprisal.max()
    assert share[0, 3] == 1.0 and share[0, 0] < 0.25 < share[0, 6] < 1.0  # the rarest token 1, filler lowest
    deltas = torch.ones(2, 2, 2, 7, dtype=torch.float64)  # (layers, b, branches, l)
    deltas[:, :, 1] = 0.25 + 0.75 * share
    assert sparse_copying.information_term(deltas, ids, branches) < 1e-30
    logits = torch.full((2, 7), -3.0, dtype=torch.float64, requires_grad=True)  # θ_Δ's logits, near the floor
    deltas = torch.ones(2, 2, 2, 7, dtype=torch.float64)
    deltas[:, :, 1] = 0.25 + 0.75 * torch.sigmoid(logits)
    sparse_copying.information_term(deltas, ids, branches).backward()
    assert logits.grad[0, 3] < 0 and logits.grad[1, 2] < 0  # descent raises the rare tokens' Δ
    assert abs(logits.grad[0, 0]) < abs(logits.grad[0, 3]) / 10  # and leaves filler near its floor


def test_a_curriculum_run_starts_from_the_model_its_arm_and_seed_trained_at_the_shorter_length(tmp_path):
    trained = sparse_copying.build_model("mamba-2L", 8, seed=3)
    with torch.no_grad():
        trained.lm_head.weight.add_(1.0)  # not what a fresh model of this seed holds
    trained.save_pretrained(tmp_path / "length64" / "mamba-2L" / "seed3" / "model")
    args = SimpleNamespace(init_from=str(tmp_path), init_length=64, vocabulary=8, rate_loss_coef=None)
    started = sparse_copying.initial_model(args, "mamba-2L", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(started.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(SystemExit, match="mamba-2L, seed 4"):
        sparse_copying.initial_model(args, "mamba-2L", seed=4)
    fresh = sparse_copying.initial_model(SimpleNamespace(**{**vars(args), "init_from": None}), "mamba-2L", seed=3)
    assert not torch.equal(fresh.lm_head.weight, trained.lm_head.weight)


def test_the_probe_reads_the_content_token_where_a_branch_holds_it_and_nowhere_else():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 8, (copy_probe.TRAIN + copy_probe.HELD_OUT,), generator=generator)
    holding = torch.nn.functional.one_hot(labels, 8).float() * 1e-3 + 1e-4 * torch.randn(len(labels), 8,
                                                                                         generator=generator)
    noise = torch.randn(len(labels), 24, generator=generator)
    assert copy_probe.probe_accuracy(torch.cat([holding, noise], 1), labels, 8) > 0.95
    assert copy_probe.probe_accuracy(torch.randn(len(labels), 32, generator=generator), labels, 8) < 0.3
    model = sparse_copying.build_model("serpent-skip", 4, seed=0)
    ids, _, _ = sparse_copying.make_examples(6, 20, 1, 4, generator)
    outputs = copy_probe.branch_outputs_at_marker(model, ids, 20, batch_size=4)
    assert sorted(outputs) == sorted(f"layer{i}_rate{rate:g}" for i in range(2) for rate in (1.0, 0.25, 0.03125))
    assert all(value.shape == (6, 64) for value in outputs.values())
    # the output at the marker, not elsewhere: changing the copies after it changes nothing
    later = ids.clone()
    later[:, 21:] = sparse_copying.FIRST_CONTENT
    assert all(torch.equal(outputs[key], value)
               for key, value in copy_probe.branch_outputs_at_marker(model, later, 20, batch_size=4).items())
    deltas = copy_probe.content_token_deltas(model, 4)
    assert sorted(deltas) == sorted(f"layer{i}_rate{rate:g}" for i in range(2) for rate in (0.25, 0.03125))
    # content token 4 after filler, alone
    alone = model(input_ids=torch.tensor([[0, 0, 0, 0, 4]]), output_deltas=True).deltas.detach()
    assert deltas["layer1_rate0.03125"][2] == round(float(alone[1, 0, 2, 4]), 4)
    ids[:, 20] = sparse_copying.FIRST_CONTENT  # the marker itself is read
    changed = copy_probe.branch_outputs_at_marker(model, ids, 20, 4)
    assert not torch.equal(changed["layer1_rate1"], outputs["layer1_rate1"])


def test_extrapolation_scores_each_new_length_once_on_examples_every_model_shares(tmp_path):
    """A copier that reaches `reach` tokens back scores the share of held-out examples whose content token lies that
    close to the marker, at every test length; a length already in result.json is not tested again."""
    reach = 100

    class ShortSighted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lengths = []

        def forward(self, input_ids):
            self.lengths.append(input_ids.shape[1])
            length = input_ids.shape[1] - 2  # filler, the marker, one copy
            content = input_ids[:, :length]
            position = (content != sparse_copying.FILLER).float().argmax(dim=1)
            logits = torch.zeros(*input_ids.shape, 16)
            seen = length - position <= reach
            logits[seen, length, content[seen, position[seen]]] = 1.0
            logits[~seen, length, sparse_copying.FILLER] = 1.0
            return SimpleNamespace(logits=logits)

    args = SimpleNamespace(test_examples=64, content=1, vocabulary=8, batch_size=16, extrapolate_to=[64, 512, 2048])
    result = {"seed": 3, "extrapolation": {"64": 0.5}}
    model = ShortSighted()
    sparse_copying.extrapolate(model, args, result, tmp_path)
    assert set(model.lengths) == {512 + 2, 2048 + 2}  # 64 was already tested
    for length in (512, 2048):
        _, _, positions = sparse_copying.test_examples(args, length, 3)
        expected = float((length - positions[:, 0] <= reach).float().mean())
        assert result["extrapolation"][str(length)] == expected
        assert 0 < expected < 1
    assert json.loads((tmp_path / "result.json").read_text())["extrapolation"] == result["extrapolation"]
    assert result["extrapolation"]["64"] == 0.5
    again = sparse_copying.test_examples(args, 512, 3)
    assert all(torch.equal(a, b) for a, b in zip(again, sparse_copying.test_examples(args, 512, 3)))


def test_extrapolation_summary_follows_the_runs_that_solved_their_training_length():
    runs = [{"model": "m", "length": 64, "seed": seed, "parameters": 1, "copy_accuracy": accuracy,
             "sequence_accuracy": accuracy, "train_seconds": 1.0, "extrapolation": {"256": far, "1024": far / 2}}
            for seed, (accuracy, far) in enumerate([(1.0, 1.0), (0.95, 0.5), (0.2, 0.9)])]
    row = sparse_copying.summarise(runs)["m"][64]["extrapolation_of_solved_runs"]
    assert row["256"] == {"copy_accuracy": 0.75, "still_solved": 1, "of": 2}  # the unsolved run is left out
    assert row["1024"] == {"copy_accuracy": 0.375, "still_solved": 0, "of": 2}


def test_spearman_ranks_ties_as_their_average_and_reads_any_monotone_map_as_one():
    import statistics

    import delta_information

    x = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0])
    y = torch.tensor([30.0, 10.0, 25.0, 20.0, 1.0])
    by_hand = statistics.correlation([4, 1, 2.5, 2.5, 5], [5, 2, 4, 3, 1])  # average ranks, Pearson
    assert delta_information.spearman(x, y) == pytest.approx(by_hand, abs=1e-12)
    values = torch.randn(200, dtype=torch.float64)
    assert delta_information.spearman(values, values.exp()) == pytest.approx(1.0)
    assert delta_information.spearman(values, -values**3) == pytest.approx(-1.0)


@pytest.mark.slow
def test_delta_information_scores_the_reference_as_its_evaluation_did(tmp_path):
    """The contextual surprisal is the reference's loss on the blocks the runs were evaluated on, aligned so that
    token t is scored from the tokens before it: its mean is the reference run's own evaluation loss."""
    run_script("context_length.py", CORPUS, "--output_dir", tmp_path, "--block_sizes", 32, "--tokens_per_step", 64,
               "--max_steps", 2, "--eval_steps", 2, "--held_out", 2, "--seeds", 0, 1, "--arms", "study-serpent-slow",
               "study-mamba-4L", cwd=tmp_path)
    runs = [tmp_path / "block32" / "study-serpent-slow" / f"seed{seed}" for seed in (0, 1)]
    reference = tmp_path / "block32" / "study-mamba-4L" / "seed0"
    run_script("delta_information.py", CORPUS, "--runs", *runs, "--reference", reference, "--held_out", 2,
               "--output_dir", tmp_path / "information", cwd=tmp_path)
    results = json.loads((tmp_path / "information" / "delta_information.json").read_text())
    evaluated = json.loads((reference / "eval_results.json").read_text())["eval_loss"]
    assert results["reference_loss"] == pytest.approx(evaluated, rel=1e-4)
    assert [len(run["branches"]) for run in results["runs"]] == [2 * 4, 2 * 4]  # 2 compressed branches, 4 layers
    for branch in results["runs"][0]["branches"]:
        assert -1 <= branch["spearman_contextual"] <= 1 and len(branch["delta_by_contextual_decile"]) == 10
        assert branch["rate"] <= branch["M_over_L"] <= 1
    assert (tmp_path / "information" / "delta_information.png").stat().st_size > 0


def write_run(folder, arm, seed, accuracy, steps, extrapolation=None, length=1024):
    directory = folder / f"length{length}" / arm / f"seed{seed}"
    directory.mkdir(parents=True)
    result = {"model": arm, "length": length, "seed": seed, "copy_accuracy": accuracy, "train_seconds": steps + seed,
              "train_loss": [[steps // 2, 1.0], [steps, 0.5]], "extrapolation": extrapolation or {}}
    (directory / "result.json").write_text(json.dumps(result))


def test_curriculum_stages_add_up_steps_per_arm_and_report_each_stages_seeds(tmp_path):
    # Stage 1: arm "a" in one sweep's folder, arm "b" in another's (the comma-separated folders of one stage);
    # stage 2: only arm "a" continues, one seed further at 8,192 than the other. Arm "a" started from runs at 128
    # (seconds 1,000 and 1,001, and a third seed the stages never continued); arm "b" from none.
    first_a, first_b, second_a, start = tmp_path / "s1a", tmp_path / "s1b", tmp_path / "s2a", tmp_path / "s0"
    for seed in (0, 1, 2):
        write_run(start, "a", seed, 1.0, 1000, length=128)
    write_run(first_a, "a", 0, 0.5, 300, {"8192": 0.2})
    write_run(first_a, "a", 1, 0.95, 300, {"8192": 0.4})
    write_run(first_b, "b", 0, 0.125, 200)
    write_run(second_a, "a", 0, 0.9, 300, {"8192": 0.6})
    write_run(second_a, "a", 1, 1.0, 300)
    table = curriculum_stages.summarise([[first_a, first_b], [second_a]], 1024, [start], 128)
    assert [row["steps_at_length"] for row in table["a"]] == [300, 600]
    assert [row["train_seconds_at_length"] for row in table["a"]] == [300.5, 601.0]  # seeds' mean, summed
    # From the start: plus the mean of the same seeds' start runs (1,000.5), not of seed 2's too.
    assert [row["train_seconds_from_start"] for row in table["a"]] == [1301.0, 1601.5]
    assert table["b"][0]["train_seconds_from_start"] is None
    assert [(row["stage"], row["steps_at_length"]) for row in table["b"]] == [(1, 200)]
    first, second = table["a"]
    assert first["copy_accuracy"]["per_seed"] == [0.5, 0.95] and first["copy_accuracy"]["seeds_solved"] == 1
    assert second["copy_accuracy"]["mean"] == pytest.approx(0.95) and second["copy_accuracy"]["seeds_solved"] == 2
    assert first["extrapolation"]["8192"]["mean"] == pytest.approx(0.3)
    assert second["extrapolation"]["8192"]["per_seed"] == [0.6]  # seed 1 was not tested there
    output = tmp_path / "stages.json"
    run_script("curriculum_stages.py", "--length", 1024, "--output", output, "--stages", f"{first_a},{first_b}",
               second_a, "--start", start, "--start_length", 128, cwd=tmp_path)
    assert json.loads(output.read_text())["arms"] == json.loads(json.dumps(table))
    assert output.with_suffix(".png").stat().st_size > 0
