"""Long Range Arena: ListOps data, TSV readers and their errors, the classifier, the training pipeline."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, TrainingArguments

from serpent_hf import SeRpEntConfig, SeRpEntForSequenceClassification
from serpent_hf.training import lra_data
from serpent_hf.training.train_lra import LRAArguments, build_model, build_optimizer, build_trainer

from .conftest import CONFIGS, cache_of, tiny_config


def evaluate_listops(source):
    """An independent evaluator: a stack machine over the token string (no tree, no recursion).

    Returns the value and the depth of the tree (a digit alone has depth 1)."""
    frames, result, depth = [], None, 0
    for token in source.replace("(", " ").replace(")", " ").split():
        if token.startswith("["):
            frames.append((token, []))
            depth = max(depth, len(frames))
        elif token == "]":
            operator, values = frames.pop()
            ordered = sorted(values)
            middle = len(ordered) // 2
            value = {
                "[MAX": ordered[-1],
                "[MIN": ordered[0],
                "[MED": ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) // 2,
                "[SM": sum(values) % 10,
            }[operator]
            if frames:
                frames[-1][1].append(value)
            else:
                result = value
        else:
            digit = int(token)
            if frames:
                frames[-1][1].append(digit)
            else:
                result = digit
            depth = max(depth, len(frames) + 1)
    assert not frames, "unbalanced expression"
    return result, depth


def test_generated_listops_labels_equal_an_independent_evaluation():
    examples = lra_data.generate_listops(300, seed=11, min_length=20, max_length=400)
    assert len({source for source, _ in examples}) == 300
    for source, target in examples:
        value, depth = evaluate_listops(source)
        assert value == target
        assert 2 <= depth <= 10
        tokens = lra_data.encode_listops(source)
        assert 20 <= len(tokens) <= 400
        assert source.count("(") == source.count(")")
    assert len({target for _, target in examples}) == 10  # every class occurs


def test_long_generated_listops_lie_in_the_length_range():
    examples = lra_data.generate_listops(20, seed=3, min_length=500, max_length=1000)
    for source, target in examples:
        assert 500 <= len(lra_data.encode_listops(source)) <= 1000
        assert evaluate_listops(source)[0] == target


def test_listops_source_follows_lra_nesting():
    tree = ("[MAX", (2, ("[SM", (4, 5)), 1))
    assert lra_data.listops_source(tree) == "( ( ( ( [MAX 2 ) ( ( ( [SM 4 ) 5 ) ] ) ) 1 ) ] )"
    assert evaluate_listops(lra_data.listops_source(tree))[0] == 9


def test_generated_tsv_reads_back_identically(tmp_path):
    datasets = lra_data.listops_datasets(None, max_length=300, sizes=(20, 5, 5), seed=4, min_length=10,
                                         write_dir=tmp_path)
    reread = lra_data.listops_datasets(tmp_path, max_length=300)
    for split in ("train", "validation", "test"):
        assert reread[split]["input_ids"] == datasets[split]["input_ids"]
        assert reread[split]["labels"] == datasets[split]["labels"]
    assert (tmp_path / "basic_val.tsv").read_text().startswith("Source\tTarget\n")
    train, test = set(map(tuple, datasets["train"]["input_ids"])), set(map(tuple, datasets["test"]["input_ids"]))
    assert not train & test  # held-out expressions never appear in training


@pytest.mark.parametrize(
    "line, message",
    [
        ("( [MAX 1 2 ] )\t3\textra", r"bad\.tsv:3: expected 2 tab-separated columns"),
        ("( [MAX 1 2 ] )", r"bad\.tsv:3: expected 2 tab-separated columns"),
        ("( [MAX 1 2 ] )\tseven", r"bad\.tsv:3: the label 'seven' is not a number"),
        ("( [MAX 1 2 ] )\t12", r"bad\.tsv:3: the label '12' is not an integer in \[0, 10\)"),
        ("( [MAX 1 [FIRST 2 ] ] )\t2", r"bad\.tsv:3: unknown ListOps token\(s\) \['\[FIRST'\]"),
        ("( )\t2", r"bad\.tsv:3: the expression is empty"),
    ],
)
def test_malformed_listops_rows_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.tsv"
    path.write_text(f"Source\tTarget\n( [MIN 3 4 ] )\t3\n{line}\n")
    with pytest.raises(ValueError, match=message):
        lra_data.read_listops_tsv(path)


def test_sequences_longer_than_max_length_fail_unless_truncated(tmp_path):
    path = tmp_path / "long.tsv"
    path.write_text("Source\tTarget\n( [SM " + "1 " * 30 + "] )\t0\n")
    with pytest.raises(ValueError, match=r"long\.tsv:2: the sequence has 32 tokens, longer than max_length=20"):
        lra_data.read_listops_tsv(path, max_length=20)
    assert len(lra_data.read_listops_tsv(path, max_length=20, truncation=True)["input_ids"][0]) == 20
    with pytest.raises(ValueError, match="longer than max_length=5"):
        lra_data.encode_listops_examples([("( [MAX 1 2 3 4 ] )", 4)], max_length=5)


def test_retrieval_tsv_reads_pairs_as_bytes_and_names_bad_lines(tmp_path):
    path = tmp_path / "aan.tsv"
    path.write_text("label\tid1\tid2\ttext1\ttext2\n1.0\ta\tb\tcite é\tpaper\n0\tc\td\tx\ty\n")
    rows = lra_data.read_retrieval_tsv(path)
    assert rows["labels"] == [1, 0]
    assert rows["input_ids"][0] == [byte + 1 for byte in "cite é".encode()]
    assert rows["input_ids_2"][1] == [ord("y") + 1]
    path.write_text("1\ta\tb\tonly four\n")
    with pytest.raises(ValueError, match=r"aan\.tsv:1: expected 5 tab-separated columns"):
        lra_data.read_retrieval_tsv(path)
    path.write_text("0.5\ta\tb\tx\ty\n")
    with pytest.raises(ValueError, match=r"aan\.tsv:1: the label '0.5' is not an integer"):
        lra_data.read_retrieval_tsv(path)
    path.write_text("1\ta\tb\t" + "z" * 9 + "\ty\n")
    with pytest.raises(ValueError, match=r"aan\.tsv:1 text1: the sequence has 9 tokens"):
        lra_data.read_retrieval_tsv(path, max_length=8, truncation=False)


def test_text_from_local_files_is_byte_level(tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(
            "\n".join(json.dumps({"text": text, "label": label}) for text, label in [("good film", 1), ("bad", 0)])
        )
    datasets = lra_data.text_datasets(train_file=str(tmp_path / "train.jsonl"), test_file=str(tmp_path / "test.jsonl"),
                                      max_length=4)
    assert datasets["train"]["input_ids"][0] == [ord(c) + 1 for c in "good"]  # LRA truncates Text
    assert datasets["validation"]["labels"] == [1, 0]


def test_collate_pads_on_the_right_with_masks():
    batch = lra_data.collate([{"input_ids": [5, 6, 7], "input_ids_2": [1], "labels": 2},
                              {"input_ids": [8], "input_ids_2": [2, 3], "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["attention_mask_2"].tolist() == [[1, 0], [1, 1]]
    assert batch["labels"].tolist() == [2, 0]


def classifier(seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(ssm_type="s4d", state_size=8, bidirectional=True, num_labels=4)
    fields.update(overrides)
    return SeRpEntForSequenceClassification(tiny_config(**fields)).eval()


def test_classifier_forward_loss_and_save_load(tmp_path):
    model = classifier()
    ids = torch.randint(3, 97, (3, 26))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    labels = torch.tensor([0, 3, 1])
    output = model(ids, attention_mask=mask, labels=labels)
    assert output.logits.shape == (3, 4)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        for loaded in (SeRpEntForSequenceClassification.from_pretrained(tmp_path),
                       AutoModelForSequenceClassification.from_pretrained(tmp_path)):
            assert type(loaded) is SeRpEntForSequenceClassification
            assert torch.equal(loaded.eval()(ids, attention_mask=mask).logits, output.logits)


def test_bidirectional_configs_have_no_cache_and_the_base_model_runs_by_default():
    model = classifier()
    assert model.config.use_cache is False  # a non-causal model has no state to continue from
    output = model.model(torch.randint(3, 97, (2, 12)))  # eval mode, default arguments: no cache requested
    assert cache_of(output) is None and output.last_hidden_state.shape == (2, 12, 32)
    for ssm_type in ("s4d", "mamba"):  # asked for one anyway, either backend names why there is none
        with pytest.raises(ValueError, match="bidirectional model reads later elements"):
            classifier(ssm_type=ssm_type).model(torch.randint(3, 97, (2, 12)), use_cache=True)


def test_classifier_follows_problem_type():
    model = classifier(num_labels=1)
    output = model(torch.randint(3, 97, (2, 9)), labels=torch.tensor([0.5, -1.0]))
    assert model.config.problem_type == "regression" and output.loss.ndim == 0


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_reads_only_real_positions(pooling):
    model = classifier(pooling=pooling)
    hidden = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    pooled = model.pool(hidden, mask)
    if pooling == "mean":
        torch.testing.assert_close(pooled[0], hidden[0, :3].mean(0))
        torch.testing.assert_close(pooled[1], hidden[1, 2:].mean(0))
    else:
        torch.testing.assert_close(pooled, torch.stack([hidden[0, 2], hidden[1, 4]]))


def test_pair_classifier_combines_both_sequences(tmp_path):
    model = classifier(pair_classification=True, num_labels=2)
    first, second = torch.randint(3, 97, (2, 15)), torch.randint(3, 97, (2, 11))
    output = model(first, input_ids_2=second, labels=torch.tensor([1, 0]))
    assert output.logits.shape == (2, 2) and output.loss.ndim == 0
    swapped = model(second, input_ids_2=first).logits
    assert not torch.allclose(swapped, output.logits)  # [u, v, u⊙v, u-v] is ordered
    with pytest.raises(ValueError, match="two sequences"):
        model(first)
    with pytest.raises(ValueError, match="one sequence"):
        classifier()(first, input_ids_2=second)


def test_lra_configs_build_and_baselines_match_parameter_counts():
    def count(config):
        with torch.device("meta"):
            return sum(p.numel() for p in SeRpEntForSequenceClassification(config).parameters())

    for task, vocab in (("listops", 16), ("text", 257), ("retrieval", 257), ("listops-cpu", 16)):
        serpent = SeRpEntConfig.from_pretrained(CONFIGS / f"lra-{task}.json")
        baseline = SeRpEntConfig.from_pretrained(CONFIGS / f"lra-{task}-s4d.json")
        assert baseline.compression_rates == [1.0] and len(serpent.compression_rates) > 1
        assert serpent.ssm_type == baseline.ssm_type == "s4d" and serpent.bidirectional and not serpent.use_cache
        assert serpent.vocab_size == baseline.vocab_size == vocab
        assert serpent.pair_classification == baseline.pair_classification == (task == "retrieval")
        assert abs(count(serpent) - count(baseline)) / count(baseline) < 0.03


def test_ssm_parameters_get_the_ssm_learning_rate():
    model = classifier()
    optimizer = build_optimizer(model, learning_rate=0.01, weight_decay=0.05, ssm_learning_rate=0.001)
    decay, no_decay, ssm = optimizer.param_groups
    mixer = model.model.layers[0].branches[0].mixer
    assert ssm["lr"] == 0.001 and ssm["weight_decay"] == 0.0
    assert any(p is mixer.log_dt for p in ssm["params"]) and any(p is mixer.C for p in decay["params"])
    assert any(p is mixer.D for p in no_decay["params"])
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


def test_listops_trains_with_the_trainer(tmp_path):
    """Twenty Trainer steps fit 16 short expressions: the loss on them falls and the accuracy climbs far above
    the majority class (an untrained or non-learning model stays near 1/10)."""
    config_path = tmp_path / "config.json"
    tiny_config(ssm_type="s4d", state_size=8, bidirectional=True, vocab_size=16, hidden_size=16,
                compression_rates=[1.0, 0.5]).to_json_file(config_path)
    args = LRAArguments(task="listops", model_config=str(config_path), max_length=40, listops_sizes=[16, 8, 8],
                        listops_min_length=5)
    datasets = lra_data.listops_datasets(None, args.max_length, args.truncation, tuple(args.listops_sizes), 0,
                                         args.listops_min_length)
    training_args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=20, per_device_train_batch_size=16,
                                      learning_rate=0.01, report_to=[], save_strategy="no", use_cpu=True,
                                      disable_tqdm=True, seed=0)
    trainer = build_trainer(build_model(args.model_config, args.task), training_args, datasets, args.ssm_learning_rate)
    before = trainer.evaluate(datasets["train"], metric_key_prefix="train")
    trainer.train()
    after = trainer.evaluate(datasets["train"], metric_key_prefix="train")
    labels = datasets["train"]["labels"]
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    assert after["train_loss"] < 0.75 * before["train_loss"]
    assert after["train_accuracy"] >= majority + 0.3
    assert 0.0 <= trainer.evaluate(datasets["test"], metric_key_prefix="test")["test_accuracy"] <= 1.0


def test_the_lra_command_seeds_its_model_resumes_and_applies_the_adam_options(tmp_path):
    """serpent-train-lra once built the model before any seed (the recipes' seed did not fix the initial weights),
    started from scratch when told to resume, and ignored --adam_beta2 and --optim: the same seed gives the same
    model, a run resumed from a checkpoint under another seed ends as the uninterrupted run, and the options reach
    the optimiser (or are refused)."""
    import shutil

    from safetensors.torch import load_file

    from serpent_hf.training.train_lra import main

    config_path = tmp_path / "config.json"
    tiny_config(ssm_type="s4d", state_size=8, bidirectional=True, vocab_size=16, hidden_size=16,
                compression_rates=[1.0, 0.5]).to_json_file(config_path)
    options = ["--task", "listops", "--model_config", str(config_path), "--max_length", "40", "--listops_sizes", "16",
               "8", "8", "--listops_min_length", "5", "--max_steps", "4", "--per_device_train_batch_size", "8",
               "--learning_rate", "0.01", "--save_strategy", "steps", "--save_steps", "2", "--data_seed", "0",
               "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true"]

    def weights(run):
        return load_file(tmp_path / run / "model.safetensors")

    main(options + ["--output_dir", str(tmp_path / "a"), "--seed", "0"])
    main(options + ["--output_dir", str(tmp_path / "b"), "--seed", "0"])
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "c" / "checkpoint-2")
    main(options + ["--output_dir", str(tmp_path / "c"), "--seed", "1", "--resume_from_checkpoint", "last"])
    expected = weights("a")
    for run in ("b", "c"):
        assert all(torch.equal(weights(run)[name], value) for name, value in expected.items()), run

    datasets = lra_data.listops_datasets(None, 40, False, (16, 8, 8), 0, 5)
    arguments = dict(output_dir=str(tmp_path / "d"), report_to=[], use_cpu=True)
    trainer = build_trainer(classifier(), TrainingArguments(adam_beta2=0.98, adam_epsilon=1e-6, **arguments), datasets,
                            1e-3)
    assert {(group["betas"], group["eps"]) for group in trainer.optimizer.param_groups} == {((0.9, 0.98), 1e-6)}
    with pytest.raises(ValueError, match="--optim sgd is not supported"):
        build_trainer(classifier(), TrainingArguments(optim="sgd", **arguments), datasets, 1e-3)


def test_no_recipe_picks_its_checkpoint_by_the_test_set():
    """IMDb (LRA Text) has no validation split, so lra_data evaluates on the test split during training: a recipe
    that kept the best checkpoint by it would report the best of its epochs on the test set itself."""
    from serpent_hf import configs
    from serpent_hf.training.arguments import read_run_file

    recipes = [read_run_file(path) for path in sorted(Path(configs.__file__).parent.glob("train-lra-*.json"))]
    text = [recipe for recipe in recipes if recipe["task"] == "text"]
    assert text and not any(recipe.get("load_best_model_at_end") for recipe in text)


def test_model_config_must_fit_the_task(tmp_path):
    config_path = tmp_path / "config.json"
    tiny_config(vocab_size=10).to_json_file(config_path)
    with pytest.raises(ValueError, match="vocab_size 10 is smaller than the listops vocabulary"):
        build_model(config_path, "listops")
    with pytest.raises(ValueError, match="task must be one of"):
        LRAArguments(task="pathfinder", model_config=str(config_path))
