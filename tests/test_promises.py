"""What the README promises, each checked where it can fail, and the checks issue 25 found unable to fail.

- No optional kernel package (mamba_ssm, causal_conv1d) is even looked for on a CPU: an import hook
  records every attempt, so the test fails on an attempt whether or not the package is installed.
- A missing kernel warns once per reason, however often it is asked for.
- serpent-train's learning-rate multipliers (0.1 for the compressed branches, 1 for θ_Δ) reach the
  optimizer's parameter groups from the command line's defaults.
- `--dataset_name` replaces the run file's train file; `--unset validation_articles` holds out 5% of the lines.
- Every logging step reports Δ's mean and 95th percentile for every layer and compressed branch.
- a LoRA-adapted model (peft) decodes as its forward pass, and the merged adapter computes what it computed.
- `delta_bias_init` sets where every compressed branch's Δ starts, in both Δ sources, through the model's own
  weight initialisation (benchmarks/sparse_copying.py's "open" arm relies on it).
"""

import math
import sys
import warnings

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import TrainingArguments

from serpent_hf import SeRpEntForCausalLM
from serpent_hf.modeling import kernels
from serpent_hf.training import data as training_data
from serpent_hf.training import train_lm
from serpent_hf.training.arguments import DataArguments, ModelArguments, ReportArguments, parse_arguments
from serpent_hf.training.trainer import SeRpEntTrainer, resampling_statistics

from .conftest import CORPUS, ROOT, DECODING_TOLERANCE, stepwise_logits, tiny_config, tiny_model

KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d")
TINY_RUN = str(ROOT / "configs" / "train-tiny.yaml")


class ImportRecorder:
    """A finder placed first on sys.meta_path: records every import of the kernel packages, then lets the
    normal finders answer (so an installed package still imports, and a missing one still fails)."""

    def __init__(self):
        self.attempts = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in KERNEL_PACKAGES:
            self.attempts.append(name)
        return None


@pytest.fixture
def import_recorder(monkeypatch):
    recorder = ImportRecorder()
    monkeypatch.setattr(sys, "meta_path", [recorder, *sys.meta_path])
    for name in [name for name in sys.modules if name.split(".")[0] in KERNEL_PACKAGES]:
        monkeypatch.delitem(sys.modules, name)
    kernels._load.cache_clear()  # a cached answer would hide an attempt
    yield recorder
    kernels._load.cache_clear()


def test_no_optional_kernel_package_is_looked_for_on_a_cpu(import_recorder):
    model = tiny_model(seed=0).train()
    ids = torch.randint(3, 97, (2, 12))
    model(ids, labels=ids).loss.backward()
    with torch.no_grad():
        stepwise_logits(model.eval(), ids, prefill=4)
        model.generate(ids[:, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    for name in kernels.KERNELS:
        assert kernels.kernel(name, ids, None) is None
    assert import_recorder.attempts == []
    kernels._load("causal_conv1d_fn")  # the recorder sees an attempt when one happens
    assert import_recorder.attempts == ["causal_conv1d"]


def fake_cuda_tensor():
    return type("CudaTensor", (), {"is_cuda": True, "device": torch.device("cuda", 0)})()


def test_a_missing_kernel_warns_once_per_reason_however_often_it_is_asked_for(monkeypatch):
    kernels._warn_fallback.cache_clear()
    monkeypatch.setattr(kernels, "_load", lambda name: (None, f"{name}: OSError: undefined symbol in the extension"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's own once-per-location filter must not do the test's work
        for _ in range(3):
            assert kernels.kernel("selective_scan_fn", fake_cuda_tensor(), None) is None
        assert len(caught) == 1 and "undefined symbol" in str(caught[0].message)
        kernels.kernel("causal_conv1d_fn", fake_cuda_tensor(), None)  # another reason: its own warning
        assert len(caught) == 2
    kernels._warn_fallback.cache_clear()


class OptimizerBuilt(Exception):
    """Raised in place of training, once serpent-train has built its optimizer."""


def test_serpent_train_defaults_give_compressed_branches_a_tenth_of_the_learning_rate(tmp_path, monkeypatch):
    """serpent-train configs/train-tiny.yaml, run until its Trainer builds the optimizer: the command line's
    defaults (compressed branches 0.1, θ_Δ 1) are the ratios of the parameter groups' learning rates."""
    built = []

    def build_optimizer_instead_of_training(trainer, *args, **kwargs):
        built.append((trainer, trainer.create_optimizer()))
        raise OptimizerBuilt

    monkeypatch.chdir(ROOT)  # the run file names the repository's files
    monkeypatch.setattr(train_lm.SeRpEntTrainer, "train", build_optimizer_instead_of_training)
    with pytest.raises(OptimizerBuilt):
        train_lm.main([TINY_RUN, "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache")])
    (trainer, optimizer), = built
    peak = 0.003  # the run file's learning_rate
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    compressed = [i for i, rate in enumerate(trainer.model.config.compression_rates) if rate < 1.0]
    seen = set()
    for name, parameter in trainer.model.named_parameters():
        if "selectivity." in name:
            expected, kind = peak, "selectivity"
        elif any(f".branches.{i}." in name for i in compressed):
            expected, kind = 0.1 * peak, "compressed"
        else:
            expected, kind = peak, "other"
        assert rates[id(parameter)] == pytest.approx(expected), name
        seen.add(kind)
    assert seen == {"selectivity", "compressed", "other"}


def test_dataset_name_on_the_command_line_replaces_the_run_files_train_file(monkeypatch):
    """The Hub dataset is what load_raw_text loads (the run file's local file is dropped, not preferred)."""
    _, data_args, _, _ = parse_arguments((ModelArguments, DataArguments, ReportArguments, TrainingArguments),
                                         [TINY_RUN, "--dataset_name", "some/dataset", "--output_dir", "unused"])
    assert data_args.dataset_name == "some/dataset" and data_args.train_file is None
    loaded = []
    lines = ["from the Hub"] + CORPUS.read_text(encoding="utf-8").splitlines()

    def load_dataset(name, config, cache_dir=None):
        loaded.append(name)
        return DatasetDict(train=Dataset.from_dict({"text": lines}))

    monkeypatch.setattr(training_data, "load_dataset", load_dataset)
    raw = training_data.load_raw_text(data_args)
    assert loaded == ["some/dataset"]
    assert list(raw["train"]["text"]) + list(raw["validation"]["text"]) == lines  # the run file's
    assert raw["train"]["text"][0] == "from the Hub"  # validation_articles still splits it


def test_unset_validation_articles_holds_out_the_last_five_percent_of_the_lines(monkeypatch):
    monkeypatch.chdir(ROOT)
    _, data_args, _, _ = parse_arguments((ModelArguments, DataArguments, ReportArguments, TrainingArguments),
                                         [TINY_RUN, "--unset", "validation_articles", "--output_dir", "unused"])
    assert data_args.validation_articles is None
    raw = training_data.load_raw_text(data_args)
    lines = list(raw["train"]["text"]) + list(raw["validation"]["text"])
    held_out = math.ceil(0.05 * len(lines))  # datasets rounds the test share up
    assert len(raw["validation"]) == held_out and held_out >= 1
    assert list(raw["validation"]["text"]) == lines[-held_out:]  # the last lines, in order (no shuffling)
    assert len(lines) == len(CORPUS.read_text(encoding="utf-8").splitlines())  # every line of the file, once


def test_resampling_statistics_give_mean_and_percentiles_for_every_layer_and_compressed_branch():
    """Hand-made Δ: in layer i, branch b, the real elements hold Δ = (1, 2, ..., 20) / 20 + i/10 + b/100."""
    rates = [1.0, 0.5, 0.25]
    layers, length = 3, 24
    base = torch.arange(1, 21, dtype=torch.float64) / 20
    deltas = torch.zeros(layers, 1, len(rates), length, dtype=torch.float64)
    for i in range(layers):
        for b in range(len(rates)):
            deltas[i, 0, b, 4:] = base + i / 10 + b / 100  # the first 4 positions are padding
    valid = torch.zeros(1, length, dtype=torch.bool)
    valid[0, 4:] = True
    lengths = torch.tensor([[[20, 10 + i, 5 + i] for i in range(layers)]]).permute(1, 0, 2)  # (layers, b, branches)
    statistics = resampling_statistics(deltas, lengths, {1: 0.5, 2: 0.25}, valid)
    expected_keys = {f"resampling/layer{i}_rate{rate:g}_{what}" for i in range(layers) for rate in (0.5, 0.25)
                     for what in ("M_over_L", "delta_mean", "delta_p5", "delta_p95")}
    assert set(statistics) == expected_keys
    for i in range(layers):
        for b, rate in ((1, 0.5), (2, 0.25)):
            shift, prefix = i / 10 + b / 100, f"resampling/layer{i}_rate{rate:g}"
            # Mean of k/20 for k = 1..20 is 10.5/20; the 95th percentile of 20 sorted values interpolates at
            # 0.95 · 19 = 18.05 between the 19th and 20th (19.05/20), the 5th at 0.95 (1.95/20).
            assert statistics[f"{prefix}_delta_mean"] == pytest.approx(10.5 / 20 + shift, abs=1e-6)
            assert statistics[f"{prefix}_delta_p95"] == pytest.approx(19.05 / 20 + shift, abs=1e-6)
            assert statistics[f"{prefix}_delta_p5"] == pytest.approx(1.95 / 20 + shift, abs=1e-6)
            assert statistics[f"{prefix}_M_over_L"] == pytest.approx(lengths[i, 0, b].item() / 20)


def test_the_trainer_logs_delta_statistics_for_every_layer_and_compressed_branch(tmp_path):
    model = tiny_model(seed=3, num_hidden_layers=3).train()
    ids = torch.randint(3, 97, (4, 32))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, logging_steps=1,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = SeRpEntTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    for layer in range(3):
        for rate in (0.5, 0.25):
            prefix = f"resampling/layer{layer}_rate{rate:g}"
            mean, p95 = logged[f"{prefix}_delta_mean"], logged[f"{prefix}_delta_p95"]
            assert rate <= mean <= p95 <= 1.0, prefix


def test_a_lora_adapted_model_decodes_as_its_forward_pass_and_merges_into_what_it_computed():
    from peft import LoraConfig, get_peft_model

    model = tiny_model(seed=6, hidden_size=64, state_size=8)
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["in_proj", "out_proj"], init_lora_weights=False))
    ids = torch.randint(3, 97, (4, 12))
    with torch.no_grad():
        expected = adapted(ids).logits
        stepped, _ = stepwise_logits(adapted.base_model.model, ids, prefill=3)
        torch.testing.assert_close(stepped, expected, rtol=0, atol=DECODING_TOLERANCE)
        # peft merges the adapter into the wrapped layer's weight.data: the merged model must follow it.
        torch.testing.assert_close(adapted.merge_and_unload()(ids).logits, expected, rtol=0, atol=DECODING_TOLERANCE)


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
@pytest.mark.parametrize("bias", [-3.0, 0.0, 2.0])
def test_delta_bias_init_sets_where_every_compressed_branch_delta_starts(delta_source, bias):
    torch.manual_seed(0)
    config = tiny_config(delta_source=delta_source, delta_bias_init=bias, compression_rates=[1.0, 0.5, 1 / 256])
    model = SeRpEntForCausalLM(config).eval()
    ids = torch.randint(3, config.vocab_size, (2, 64))
    with torch.no_grad():
        deltas = model(input_ids=ids, output_deltas=True).deltas  # (layers, b, branches, l)
    expected_share = torch.sigmoid(torch.tensor(bias, dtype=torch.float64))
    for branch, rate in config.compressed_branches.items():
        share = (deltas[:, :, branch] - rate) / (1 - rate)  # Δ's place in the branch's free range [κ, 1]
        # θ_Δ's weights start small (0.02), so every element starts near the bias's share; the biases tried lie
        # at least 0.38 apart in share, and an initialisation that ignored the config would land on another one's.
        assert abs(float(share.mean()) - float(expected_share)) < 0.03, (delta_source, branch, float(share.mean()))
