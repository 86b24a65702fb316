"""Held-out loss by position within the block (training.evaluation.loss_by_position, serpent-eval --position_buckets):
bucket edges, which position each prediction lands in, and agreement with the Trainer's evaluation."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from serpent_hf.training import eval_lm
from serpent_hf.training.data import train_bpe_tokenizer
from serpent_hf.training.evaluation import bucket_names, loss_by_position

from .conftest import CORPUS, tiny_model

VOCABULARY = 11


class KnowsTheFutureFrom(torch.nn.Module):
    """A stand-in model whose prediction at position p (the p-th token, 1-based) is certain and right for p >= start
    and uniform before: its loss by position is known exactly (0 from `start` on, log V before)."""

    def __init__(self, start):
        super().__init__()
        self.start = start
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, VOCABULARY)
        following = torch.nn.functional.one_hot(input_ids[:, 1:], VOCABULARY).float() * 1e4
        logits[:, self.start - 1:-1] = following[:, self.start - 1:]  # column p - 1 predicts token p + 1
        return SimpleNamespace(logits=logits)


def test_bucket_edges_cover_every_predicted_position_once():
    assert bucket_names(300, (128, 512)) == [("1-128", 1, 128), ("129-299", 129, 299)]
    assert bucket_names(2048, (128, 512, 2048)) == [("1-128", 1, 128), ("129-512", 129, 512), ("513-2047", 513, 2047)]
    assert bucket_names(100, (128,)) == [("1-99", 1, 99)]
    assert bucket_names(1000, (64,)) == [("1-64", 1, 64), ("65-999", 65, 999)]  # positions past the last edge


def test_each_prediction_lands_in_the_bucket_of_its_position():
    blocks = torch.randint(0, VOCABULARY, (3, 200), generator=torch.Generator().manual_seed(0))
    scores = loss_by_position(KnowsTheFutureFrom(start=129), blocks, buckets=(128,))
    early, late = scores["buckets"]
    assert (early["name"], late["name"]) == ("1-128", "129-199")
    assert early["loss"] == pytest.approx(math.log(VOCABULARY), rel=1e-6)
    assert late["loss"] == pytest.approx(0.0, abs=1e-6) and late["top1"] == 1.0
    assert (early["tokens"], late["tokens"]) == (3 * 128, 3 * 71)
    assert scores["loss_curve"][0] == pytest.approx(math.log(VOCABULARY)) and scores["loss_curve"][-1] == pytest.approx(0.0)


def test_bad_blocks_are_refused():
    with pytest.raises(ValueError, match="block length >= 2"):
        loss_by_position(KnowsTheFutureFrom(start=1), torch.zeros(4, 1, dtype=torch.long))


def test_serpent_eval_reports_positions_that_average_to_its_loss(tmp_path):
    tokenizer = train_bpe_tokenizer([CORPUS.read_text(encoding="utf-8")], 300)
    model = tiny_model(vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    results = eval_lm.main(["--model_name_or_path", str(tmp_path / "model"), "--train_file", str(CORPUS),
                            "--validation_articles", "2", "--block_size", "96", "--position_buckets", "16", "64",
                            "--per_device_eval_batch_size", "4", "--use_cpu", "true", "--report_to", "none",
                            "--disable_tqdm", "true", "--output_dir", str(tmp_path / "compare")])
    metrics = results[str(tmp_path / "model")]
    buckets = metrics["by_position"]["buckets"]
    assert [bucket["name"] for bucket in buckets] == ["1-16", "17-64", "65-95"]
    mean = sum(bucket["loss"] * bucket["tokens"] for bucket in buckets) / sum(bucket["tokens"] for bucket in buckets)
    assert mean == pytest.approx(metrics["eval_loss"], rel=1e-5)  # the same predictions the Trainer scored
    top1 = sum(bucket["top1"] * bucket["tokens"] for bucket in buckets) / sum(bucket["tokens"] for bucket in buckets)
    assert top1 == pytest.approx(metrics["eval_top1_accuracy"], abs=1e-6)
    saved = json.loads((tmp_path / "compare" / "eval_results.json").read_text())
    assert saved[str(tmp_path / "model")]["by_position"]["buckets"] == buckets
    assert (tmp_path / "compare" / "loss_by_position.png").stat().st_size > 0
