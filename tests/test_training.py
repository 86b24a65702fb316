"""The language-model pipeline end to end on a small text fixture: serpent-train (train_lm.py) writes
every artefact with sane values, eval_lm.py agrees with it, two processes match one, a killed run
resumes to the same result, and bad inputs fail with clear errors.

The runs share one configuration (tiny model, 24 steps of 4 blocks × 64 tokens, no dropout) and
one uninterrupted reference run, so the whole file takes about a minute on 2 CPU cores.
"""

import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import huggingface_hub
import matplotlib.image
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, MambaConfig, MambaForCausalLM

from serpent_hf.training import eval_lm, train_lm
from serpent_hf.training.resume import checkpoint_to_resume
from serpent_hf.training.arguments import DataArguments, ModelArguments, ReportArguments, parse_arguments
from serpent_hf.training.data import hold_out_articles, split_articles

from .conftest import CORPUS, ROOT, run_without_serpent_hf

STEPS, SAVE_STEPS = 24, 8
RUN = {  # the run file of every test run here (CLI options override it)
    "model_config": str(ROOT / "configs" / "tiny.json"),
    "train_file": str(CORPUS),
    "validation_articles": 2,
    "train_tokenizer": 512,
    "block_size": 64,
    "max_eval_samples": 12,
    "max_steps": STEPS,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "learning_rate": 3e-3,
    "warmup_steps": 2,
    "lr_scheduler_type": "cosine",
    "eval_strategy": "steps",
    "eval_steps": SAVE_STEPS,
    "save_steps": SAVE_STEPS,
    "logging_steps": 4,
    "seed": 0,
    "dataloader_drop_last": True,  # equal batches, so 2 processes × 2 blocks see exactly 1 process × 4 blocks
    "use_cpu": True,
    "report_to": "none",
    "disable_tqdm": True,
    "sample_max_new_tokens": 12,
}
METRICS = ("eval_loss", "eval_perplexity", "eval_top1_accuracy", "eval_top5_accuracy")


def read_json(path):
    return json.loads(path.read_text())


def losses_by_step(output_dir):
    history = read_json(output_dir / "trainer_state.json")["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def subprocess_env():
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({**RUN, "cache_dir": str(folder / "cache")}))
    return path


@pytest.fixture(scope="module")
def reference(run_file):
    """One uninterrupted run, in this process, from the run file plus an output directory."""
    output_dir = run_file.parent / "reference"
    train_lm.main([str(run_file), "--output_dir", str(output_dir)])
    return output_dir


def test_the_run_file_and_the_command_line_combine(run_file):
    model_args, data_args, report_args, training_args = parse_arguments(
        (ModelArguments, DataArguments, ReportArguments, train_lm.TrainingArguments),
        [str(run_file), "--output_dir", "elsewhere", "--max_steps", "3"])
    assert (training_args.max_steps, training_args.output_dir, training_args.seed) == (3, "elsewhere", 0)
    assert (model_args.train_tokenizer, data_args.validation_articles, data_args.block_size) == (512, 2, 64)
    assert training_args.dataloader_drop_last is True and report_args.sample_max_new_tokens == 12


def parse_run(argv):
    return parse_arguments((ModelArguments, DataArguments, ReportArguments, train_lm.TrainingArguments), argv)


@pytest.mark.parametrize(
    "option, value, replaced",
    [("--validation_file", "other.txt", "validation_articles"), ("--tokenizer_name", "my-bpe", "train_tokenizer"),
     ("--validation_split_percentage", "10", "validation_articles")],
)
def test_a_command_line_option_replaces_the_run_file_options_it_conflicts_with(run_file, option, value, replaced):
    """The run file holds validation_articles and train_tokenizer; the command line's alternative wins."""
    model_args, data_args, _, _ = parse_run([str(run_file), option, value])
    assert str(getattr(data_args if "validation" in option else model_args, option[2:])) == value
    assert getattr(data_args if "validation" in replaced else model_args, replaced) is None


def test_a_run_file_option_is_unset_from_the_command_line(run_file):
    model_args, data_args, _, training_args = parse_run([str(run_file), "--unset", "validation_articles", "train_tokenizer",
                                                         "--max_steps", "5"])
    assert data_args.validation_articles is None and model_args.train_tokenizer is None
    assert training_args.max_steps == 5 and data_args.block_size == 64  # the rest of the run file still applies
    with pytest.raises(ValueError, match="--unset validation_artcles: no such option"):
        parse_run([str(run_file), "--unset", "validation_artcles"])


def test_two_choices_of_the_evaluation_text_are_a_clear_error(tmp_path):
    from serpent_hf.training.data import load_raw_text

    args = DataArguments(train_file=str(CORPUS), validation_file=str(CORPUS), validation_articles=2)
    with pytest.raises(ValueError, match="--validation_file and --validation_articles both choose the evaluation text"):
        load_raw_text(args, str(tmp_path / "cache"))


def test_a_training_file_that_is_not_utf8_is_named_with_the_byte_offset(tmp_path, offline):
    from serpent_hf.training.data import first_invalid_utf8, load_raw_text

    train_file = tmp_path / "latin1.txt"
    train_file.write_bytes("A first line\nCaf\u00e9 au lait \u00e9\n".encode("latin-1"))  # é is byte 0xE9 at offset 16
    with pytest.raises(ValueError, match=rf"--train_file {train_file} is not UTF-8 text: byte 0xe9 at offset 16"):
        load_raw_text(DataArguments(train_file=str(train_file)), str(tmp_path / "cache"))
    for chunk_size in (1, 2, 3, 17):  # a character split between reads is carried over, not mistaken for an error
        assert first_invalid_utf8(train_file, chunk_size) == (16, 0xE9)


def test_resuming_from_a_checkpoint_without_optimizer_state_warns(tmp_path, caplog):
    checkpoint = tmp_path / "checkpoint-8"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    with caplog.at_level("WARNING", logger="serpent_hf.training.resume"):
        assert checkpoint_to_resume("last", str(tmp_path)) == str(checkpoint)
    assert f"{checkpoint} holds no optimizer state" in caplog.text
    caplog.clear()
    (checkpoint / "optimizer.pt").write_bytes(b"")
    assert checkpoint_to_resume(str(checkpoint), str(tmp_path)) == str(checkpoint)
    assert "optimizer" not in caplog.text
    assert checkpoint_to_resume(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match="no checkpoint-\\* folder in --output_dir"):
        checkpoint_to_resume("last", str(tmp_path / "empty"))


def test_the_ready_run_files_parse():
    parse = lambda name: parse_arguments(  # noqa: E731
        (ModelArguments, DataArguments, ReportArguments, train_lm.TrainingArguments), [str(ROOT / "configs" / name)])
    model_args, data_args, _, training_args = parse("train-tiny.yaml")
    assert model_args.model_config == "configs/tiny.json" and data_args.train_file == "tests/fixtures/tiny_corpus.txt"
    assert (ROOT / data_args.train_file).is_file() and training_args.max_steps > 0
    model_args, data_args, _, training_args = parse("train-wikitext103-small.yaml")
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("wikitext", "wikitext-103-v1")
    assert model_args.tokenizer_name == "gpt2" and data_args.train_file is None
    assert (ROOT / model_args.model_config).is_file()


def test_wikitext_articles_split_at_top_level_headings_only():
    lines = CORPUS.read_text().splitlines(keepends=True)
    articles = split_articles(lines)
    assert len(articles) == 10 and all(article[0].startswith(" = ") for article in articles)
    wiki = [" \n", " = One = \n", " = = Section = = \n", "text\n", " = Two = \n", "more\n", " = Three = \n", "end\n"]
    assert [article[:2] for article in split_articles(wiki)] == [[" \n", " = One = \n"], [" = Two = \n", "more\n"],
                                                                 [" = Three = \n", "end\n"]]
    train, held_out = hold_out_articles(wiki, 1)
    assert held_out == [" = Three = \n", "end\n"] and train + held_out == wiki


def test_a_run_writes_every_artefact_with_sane_values(reference):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "eval_results.json", "train_results.json",
                 "training_curves.png", "deltas.png", "README.md", "sample.txt", f"checkpoint-{STEPS}"):
        assert (reference / name).exists(), name
    results = read_json(reference / "eval_results.json")
    assert 0.0 <= results["eval_top1_accuracy"] <= results["eval_top5_accuracy"] <= 1.0
    assert results["eval_top5_accuracy"] > 0.05  # a model that learned nothing scores 5/512 ≈ 0.01
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert results["eval_loss"] < math.log(512)  # better than uniform over the vocabulary
    losses = losses_by_step(reference)
    assert sorted(losses) == list(range(4, STEPS + 1, 4)) and losses[STEPS] < losses[4]
    for image in ("training_curves.png", "deltas.png"):
        pixels = matplotlib.image.imread(reference / image)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels.std() > 0.01  # a real figure

    model = AutoModelForCausalLM.from_pretrained(reference)
    tokenizer = AutoTokenizer.from_pretrained(reference)
    assert len(tokenizer) == 512 and model.config.eos_token_id == tokenizer.eos_token_id
    card = ModelCard.load(reference / "README.md")
    parameters = sum(p.numel() for p in model.parameters())
    for text in (f"{parameters:,}", "compression_rates", "tiny_corpus.txt", "training_curves.png", "deltas.png",
                 "from_pretrained", "Where SeRpEnt helps", f"{results['eval_top1_accuracy']:.4f}",
                 f"{results['eval_perplexity']:.4f}",
                 (reference / "sample.txt").read_text().strip()):
        assert text in card.text, text
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert reported["Top-5 accuracy"] == pytest.approx(results["eval_top5_accuracy"], abs=1e-6)


def test_the_model_card_loads_the_run_with_serpent_hf_and_with_transformers_alone(reference, tmp_path):
    """Its two examples run as written: `import serpent_hf` + Auto classes here, and
    `trust_remote_code=True` in a process that cannot import serpent_hf. Both name the run's folder."""
    card = (reference / "README.md").read_text()
    with_package, transformers_only = re.findall(r"```python\n(.*?)```", card, re.S)
    assert f'from_pretrained("{reference}")' in with_package
    assert f'from_pretrained("{reference}", trust_remote_code=True)' in transformers_only
    namespace = {}
    exec(compile(with_package, "README.md", "exec"), namespace)
    assert type(namespace["model"]).__module__ == "serpent_hf.modeling_serpent"
    check = "\nassert type(model).__module__.startswith('transformers_modules'), type(model)\n"
    finished = run_without_serpent_hf(transformers_only + check, cwd=tmp_path, modules_cache=tmp_path / "modules")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "trust_remote_code" not in finished.stdout + finished.stderr  # no prompt asks to allow the code


def test_the_model_card_evaluation_command_reproduces_the_card_metrics(reference, tmp_path):
    """The card's serpent-eval command, with OTHER_CHECKPOINT left out, selects the run's own evaluation text (its
    held-out articles, block size and evaluation blocks) and so gives the metrics the card reports."""
    card = ModelCard.load(reference / "README.md")
    command = re.search(r"```bash\n(serpent-eval .*?)\n```", card.text, re.S).group(1)
    argv = shlex.split(command.replace(" OTHER_CHECKPOINT", ""))[1:]
    assert "--max_eval_samples" in argv  # the run evaluated 12 blocks, not all of its held-out text
    results = eval_lm.main(argv + ["--per_device_eval_batch_size", "4", "--use_cpu", "true", "--report_to", "none",
                                   "--disable_tqdm", "true", "--output_dir", str(tmp_path / "card")])
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert results[str(reference)]["eval_top1_accuracy"] == pytest.approx(reported["Top-1 accuracy"], abs=1e-6)
    assert results[str(reference)]["eval_perplexity"] == pytest.approx(reported["Perplexity"], rel=1e-5)


def test_eval_lm_compares_checkpoints_with_the_same_metric(reference, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(reference)
    others = {"gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=2, n_positions=64)),
              "mamba": MambaForCausalLM(MambaConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, state_size=4))}
    for name, model in others.items():
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    results = eval_lm.main(["--model_name_or_path", str(reference), str(tmp_path / "gpt2"), str(tmp_path / "mamba"),
                            "--train_file", str(CORPUS), "--validation_articles", "2", "--block_size", "64",
                            "--max_eval_samples", "12", "--per_device_eval_batch_size", "4", "--use_cpu", "true",
                            "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "compare")])
    assert read_json(tmp_path / "compare" / "eval_results.json") == json.loads(json.dumps(results))
    trained = read_json(reference / "eval_results.json")
    for key in METRICS:  # eval_lm on the trained checkpoint reproduces the end of training
        assert results[str(reference)][key] == pytest.approx(trained[key], rel=1e-5)
    assert [results[str(tmp_path / name)]["model_type"] for name in others] == ["gpt2", "mamba"]
    for name in others:  # random models: near-uniform loss, much worse than the trained one
        assert results[str(tmp_path / name)]["eval_loss"] > trained["eval_loss"]


def test_eval_lm_evaluates_a_run_at_its_own_block_size(reference, tmp_path):
    """Without --block_size, serpent-eval cuts the text into the blocks the run was trained on (64 here; its own
    default would be 1024) and so reproduces the run's final evaluation."""
    assert read_json(reference / "train_results.json")["train_block_size"] == 64
    results = eval_lm.main(["--model_name_or_path", str(reference), "--train_file", str(CORPUS),
                            "--validation_articles", "2", "--max_eval_samples", "12", "--per_device_eval_batch_size", "4",
                            "--use_cpu", "true",
                            "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "own")])
    assert results[str(reference)]["block_size"] == 64
    trained = read_json(reference / "eval_results.json")
    for key in METRICS:
        assert results[str(reference)][key] == pytest.approx(trained[key], rel=1e-5)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_reach_the_loss_of_one(reference, run_file):
    """accelerate launch, 2 CPU processes × 2 blocks per step == 1 process × 4 blocks per step.

    Same seed, same data order, same global batch; only the order of floating-point sums differs
    (the gradient all-reduce), so losses agree to 1e-4 relative. (accelerate's `--cpu` flag would
    start a single process; `--multi_gpu` starts torch.distributed workers and the run's
    `use_cpu: true` makes them CPU processes talking over gloo.)"""
    output_dir = run_file.parent / "two-processes"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               "-m", "serpent_hf.training.train_lm", str(run_file), "--output_dir", str(output_dir),
               "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2"]
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    finished = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    distributed, single = read_json(output_dir / "all_results.json"), read_json(reference / "all_results.json")
    assert read_json(output_dir / "trainer_state.json")["global_step"] == STEPS
    assert "| processes | 2 |" in (output_dir / "README.md").read_text()  # really two processes
    assert distributed["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    for key in METRICS:
        assert distributed[key] == pytest.approx(single[key], rel=1e-4), key
    reference_losses, distributed_losses = losses_by_step(reference), losses_by_step(output_dir)
    for step, loss in reference_losses.items():
        assert distributed_losses[step] == pytest.approx(loss, rel=1e-4), step


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(reference, run_file):
    output_dir = run_file.parent / "killed"
    checkpoint = output_dir / f"checkpoint-{SAVE_STEPS}"
    process = subprocess.Popen([sys.executable, "-m", "serpent_hf.training.train_lm", str(run_file),
                                "--output_dir", str(output_dir)], env=subprocess_env(), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:  # the trainer state is the last file of a checkpoint
                json.loads((checkpoint / "trainer_state.json").read_text())
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-3000:]
    assert not (output_dir / "eval_results.json").exists()  # it really died mid-training
    assert not (output_dir / f"checkpoint-{STEPS}").exists()

    train_lm.main([str(run_file), "--output_dir", str(output_dir), "--resume_from_checkpoint", str(checkpoint)])
    resumed, uninterrupted = read_json(output_dir / "eval_results.json"), read_json(reference / "eval_results.json")
    for key in METRICS:  # the same computation in the same order: equal up to float noise
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-6), key
    assert losses_by_step(output_dir) == pytest.approx(losses_by_step(reference), rel=1e-6)


@pytest.fixture
def offline(monkeypatch):
    import datasets.config

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


TEXT = CORPUS.read_text()


@pytest.mark.parametrize(
    "content, options, message",
    [
        (None, ["--train_file", "no/such/file.txt"], "--train_file no/such/file.txt does not exist"),
        (None, ["--dataset_name", "no-such-dataset-anywhere"], "could not load dataset 'no-such-dataset-anywhere'"),
        ("", [], r"--train_file \S+ is empty"),
        (" \n\n   \n", [], "training text .* is empty"),
        ("Only a few words here.\n" * 3, ["--block_size", "4096"], "--block_size 4096 is larger than the train data"),
        (TEXT, ["--tokenizer_name", "./no/such/tokenizer"], "--tokenizer_name ./no/such/tokenizer is not a directory"),
        (TEXT, ["--tokenizer_name", "no-such-tokenizer-anywhere"], "could not load tokenizer 'no-such-tokenizer-anywhere'"),
        (TEXT, ["--model_config", "configs/no-such-config.json"], "no-such-config.json does not exist"),
        (TEXT, ["--model_config", "configs/no-such-config.json", "--train_tokenizer", "300"],
         "no-such-config.json does not exist"),
    ],
    ids=["missing-file", "missing-dataset", "empty-file", "blank-file", "block-too-large", "missing-tokenizer-folder",
         "missing-tokenizer-on-hub", "missing-config", "missing-config-with-bpe"],
)
def test_bad_inputs_fail_with_clear_errors(tmp_path, offline, content, options, message):
    """Each fails with an error that names the problem, and leaves an output folder that the corrected command
    trains into without --overwrite_output_dir; a missing config is found before any BPE is trained."""
    train_file = tmp_path / "train.txt"
    if content is not None:
        train_file.write_text(content)
    argv = ["--model_config", str(ROOT / "configs" / "tiny.json"), "--validation_split_percentage", "34",
            "--block_size", "8", "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--use_cpu", "true",
            "--cache_dir", str(tmp_path / "cache")]
    if "--dataset_name" not in options:
        argv += ["--train_file", str(train_file)]
    if "--tokenizer_name" not in options and "--model_config" not in options:  # (a config's own BPE: its check)
        argv += ["--train_tokenizer", "300"]
    with pytest.raises(ValueError, match=message):
        train_lm.main(argv + options)
    output = tmp_path / "out"
    train_lm.check_output_dir(SimpleNamespace(output_dir=str(output), resume_from_checkpoint=None), overwrite=False)
    if "--model_config" in options:
        assert not output.exists() or not any(output.iterdir())


def test_a_folder_with_only_vocab_and_merges_loads_as_a_gpt2_tokenizer(tmp_path):
    """The offline GPT-2 BPE (a local copy of GPT-2's tokenizer files) is such a folder."""
    from tokenizers import ByteLevelBPETokenizer

    from serpent_hf.training.data import load_tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    tokenizer = load_tokenizer(str(tmp_path))
    assert type(tokenizer).__name__.startswith("GPT2Tokenizer")
    assert tokenizer("The river")["input_ids"] == bpe.encode("The river").ids
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
