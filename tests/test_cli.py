"""What a user of the commands meets before any training: presets by name, serpent-train's recipe defaults,
refusals instead of silent overwrites, logged vocabulary growth, one-line errors (tracebacks with --debug),
LRA data folders that say how to make them, and generate() refusing a mask of the wrong shape."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from serpent_hf import configs
from serpent_hf.cli import take_debug
from serpent_hf.training import lra_data, train_lm, train_lra
from serpent_hf.training.arguments import DataArguments, ModelArguments, ReportArguments, parse_arguments
from serpent_hf.training.models import build_model, resolve_model_config

from .conftest import CONFIGS, CORPUS

TRAIN_TYPES = (ModelArguments, DataArguments, ReportArguments, train_lm.TrainingArguments)


def test_every_model_config_is_a_preset_by_name():
    names = sorted(p.stem for p in CONFIGS.glob("*.json") if not p.stem.startswith("train-"))
    assert configs.model_presets() == names
    for name in names:
        assert resolve_model_config(name) == str(CONFIGS / f"{name}.json")
    assert configs.model_preset("no-such-preset") is None and configs.model_preset("train-lra-text") is None


def test_a_local_folder_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert resolve_model_config("tiny") == "tiny"


def test_shipped_run_files_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, data_args, _, training_args = parse_arguments(TRAIN_TYPES, ["train-tiny.yaml", "--max_steps", "3"])
    assert data_args.train_file == "tests/fixtures/tiny_corpus.txt" and training_args.max_steps == 3


def test_serpent_train_defaults_are_the_recipe_and_a_run_file_overrides_them(tmp_path):
    model_args, data_args, _, args = parse_arguments(TRAIN_TYPES, ["--model_config", "tiny", "--output_dir", "x"],
                                                     defaults=train_lm.RECIPE)
    assert (args.learning_rate, args.lr_scheduler_type.value, args.num_train_epochs) == (3e-3, "cosine", 10)
    assert (args.warmup_steps, args.eval_steps, args.logging_steps) == (0.1, 0.1, 0.02)
    assert model_args.tokenizer_name is None and data_args.block_size is None
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump({"learning_rate": 1e-3, "output_dir": "x", "model_config": "tiny"}))
    _, _, _, args = parse_arguments(TRAIN_TYPES, [str(run_file), "--warmup_steps", "5"], defaults=train_lm.RECIPE)
    assert (args.learning_rate, args.warmup_steps, args.weight_decay) == (1e-3, 5, 0.1)


def test_a_new_model_trains_a_bpe_of_its_config_size_and_a_checkpoint_keeps_its_tokenizer(tmp_path):
    model_args, *_ = parse_arguments(TRAIN_TYPES, ["--model_config", "small", "--output_dir", "x"])
    train_lm.choose_tokenizer(model_args)
    assert (model_args.train_tokenizer, model_args.tokenizer_name) == (4096, None)
    model_args, *_ = parse_arguments(TRAIN_TYPES, ["--model_config", str(tmp_path), "--output_dir", "x"])
    train_lm.choose_tokenizer(model_args)
    assert (model_args.train_tokenizer, model_args.tokenizer_name) == (None, str(tmp_path))
    model_args, *_ = parse_arguments(TRAIN_TYPES, ["--model_config", str(tmp_path), "--train_tokenizer", "512",
                                                   "--output_dir", "x"])
    with pytest.raises(ValueError, match="--train_tokenizer trains a new BPE, whose ids mean nothing to the checkpoint"):
        train_lm.choose_tokenizer(model_args)


def test_a_non_empty_output_dir_is_refused_unless_resuming_or_asked(tmp_path):
    (tmp_path / "model.safetensors").touch()
    argv = ["--model_config", "tiny", "--train_file", str(CORPUS), "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="is not empty .*--overwrite_output_dir"):
        train_lm.main(argv)
    for extra in (["--overwrite_output_dir"], ["--resume_from_checkpoint", "last"]):
        *_, args = parse_arguments(TRAIN_TYPES, argv + extra)
        train_lm.check_output_dir(args, "--overwrite_output_dir" in extra)  # no error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # the refusal wrote nothing


def test_overwriting_a_run_removes_its_checkpoints_so_they_cannot_outlive_the_new_ones(tmp_path):
    """Within the Trainer's save_total_limit an earlier run's checkpoint-800 would survive beside the new run's
    checkpoint-1 and be what `--resume_from_checkpoint last` picks (the newest step, not the newest run)."""
    from transformers.trainer_utils import get_last_checkpoint

    (tmp_path / "checkpoint-800").mkdir()
    (tmp_path / "checkpoint-800" / "model.safetensors").touch()
    argv = ["--model_config", "tiny", "--train_file", str(CORPUS), "--output_dir", str(tmp_path), "--max_steps", "1",
            "--save_steps", "1", "--block_size", "16", "--use_cpu", "true", "--overwrite_output_dir"]
    train_lm.main(argv)
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-1")
    assert not (tmp_path / "checkpoint-800").exists()


def test_a_growing_vocabulary_is_logged_with_the_parameter_counts(caplog):
    class Tokenizer:  # build_model asks a tokenizer only its length and special ids
        bos_token_id = eos_token_id = pad_token_id = 0

        def __len__(self):
            return 1000

    with caplog.at_level(logging.WARNING):
        model = build_model("tiny", Tokenizer())
    assert model.config.vocab_size == 1000
    grown = 239_940 + (1000 - 512) * 64  # tied embedding and head: one new row of 64 per id
    assert "vocabulary of 512 but the tokenizer has 1,000 ids" in caplog.text
    assert f"parameters 239,940 -> {grown:,}" in caplog.text and model.num_parameters() == grown


def test_a_model_config_in_yaml_builds_the_model_its_json_builds(tmp_path):
    """--model_config takes a config file in YAML (the run files' format) as well as JSON; YAML without a model_type
    is refused by name."""
    class Tokenizer:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return 512

    fields = json.loads(Path(resolve_model_config("tiny")).read_text())
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**fields, "hidden_size": 48}))
    torch.manual_seed(0)
    from_yaml = build_model(str(tmp_path / "tiny.yaml"), Tokenizer())
    (tmp_path / "tiny.json").write_text(json.dumps({**fields, "hidden_size": 48}))
    torch.manual_seed(0)
    from_json = build_model(str(tmp_path / "tiny.json"), Tokenizer())
    assert from_yaml.config.name_or_path == str(tmp_path / "tiny.yaml") and from_yaml.config.hidden_size == 48
    from_yaml.config.name_or_path = from_json.config.name_or_path
    assert from_yaml.config.to_dict() == from_json.config.to_dict()
    for (name, a), b in zip(from_yaml.state_dict().items(), from_json.state_dict().values()):
        assert torch.equal(a, b), name
    del fields["model_type"]
    (tmp_path / "anonymous.yaml").write_text(yaml.safe_dump(fields))
    with pytest.raises(ValueError, match="model_type"):
        build_model(str(tmp_path / "anonymous.yaml"), Tokenizer())


def run_command(code, *args, cwd):
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})


TRAIN = "import sys; sys.argv[0] = 'serpent-train'; from serpent_hf.training.train_lm import command; command()"


def test_a_command_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    finished = run_command(TRAIN, "--model_config", "tiny", "--train_file", "missing.txt", "--output_dir", "o",
                           cwd=tmp_path)
    assert finished.returncode == 1 and "Traceback" not in finished.stderr  # log lines before it, then the one line
    assert finished.stderr.strip().splitlines()[-1] == (
        "serpent-train: error: --train_file missing.txt does not exist (or is not a file) (--debug shows the traceback)")
    finished = run_command(TRAIN, "--model_config", "tiny", "--train_file", "missing.txt", "--output_dir", "o",
                           "--debug", cwd=tmp_path)
    assert finished.returncode == 1 and "Traceback" in finished.stderr and "does not exist" in finished.stderr


def test_a_bare_debug_is_ours_and_debug_with_a_value_is_the_trainers():
    assert take_debug(["--debug", "--x", "1"]) == (["--x", "1"], True)
    assert take_debug(["--x", "1", "--debug"]) == (["--x", "1"], True)
    assert take_debug(["--debug", "underflow_overflow"]) == (["--debug", "underflow_overflow"], False)


def test_a_missing_lra_folder_says_how_to_make_it(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist: generate it with `python -m serpent_hf.training.lra_data"):
        lra_data.listops_datasets(str(tmp_path / "listops-1000"))
    (tmp_path / "basic_train.tsv").write_text("Source\tTarget\n")
    with pytest.raises(ValueError, match="lacks basic_val.tsv, basic_test.tsv"):
        lra_data.listops_datasets(str(tmp_path))
    with pytest.raises(ValueError, match="lra_release"):
        lra_data.retrieval_datasets(str(tmp_path))


def test_lra_presets_and_recipes_resolve_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_lra.build_model("lra-listops-cpu", "listops").config.hidden_size == 26
    args, training_args = parse_arguments((train_lra.LRAArguments, train_lra.TrainingArguments),
                                          ["train-lra-listops-cpu.json", "--max_steps", "7"])
    assert (args.task, args.model_config, args.data_path, training_args.max_steps) == ("listops", "lra-listops-cpu",
                                                                                       None, 7)


@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (1, 2), (3,)])
def test_generate_refuses_an_attention_mask_of_the_wrong_shape(model, shape):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match=r"attention_mask has shape .*generate\(\) expects \(1, 3\)"):
        model.generate(ids, attention_mask=torch.ones(shape, dtype=torch.long), max_new_tokens=2)
    assert model.generate(ids, attention_mask=torch.ones(1, 3, dtype=torch.long), max_new_tokens=2).shape == (1, 5)


def test_the_model_card_counts_the_tokens_of_a_short_last_batch(tmp_path):
    """10 blocks in batches of 4: three steps see 4 + 4 + 2 blocks, 160 tokens of 16, not 3 × 4 × 16 = 192."""
    argv = ["--model_config", "tiny", "--train_file", str(CORPUS), "--output_dir", str(tmp_path), "--block_size", "16",
            "--max_train_samples", "10", "--per_device_train_batch_size", "4", "--max_steps", "3", "--use_cpu", "true",
            "--save_strategy", "no"]
    train_lm.main(argv)
    assert "tokens trained: 160 (3 steps of up to 4 blocks of 16 tokens)" in (tmp_path / "README.md").read_text()

