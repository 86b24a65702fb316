"""lm-evaluation-harness scores a serpent-train run as any Hugging Face model, offline: `lm_eval --model hf
--model_args pretrained=RUN,trust_remote_code=True` on the local text task of benchmarks/lm_eval/, and its bits
per byte are the model's own log-likelihood of the held-out articles, computed here by hand."""

import glob
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from serpent_hf.training import train_lm

from .conftest import CORPUS, ROOT

pytest.importorskip("lm_eval")  # the `lm-eval` extra (also in `test`)

TASKS = ROOT / "benchmarks" / "lm_eval"
spec_path = TASKS / "serpent_text.py"


def load_task_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("serpent_text", spec_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_task_reads_the_articles_of_a_local_file():
    task = load_task_module()
    documents = task.load(text_file=str(CORPUS))["test"]["text"]
    assert len(documents) == 10 and all(document.startswith(" = ") for document in documents)
    assert "".join(documents).strip() == CORPUS.read_text().strip()
    assert task.load(text_file=str(CORPUS), last_articles=2)["test"]["text"] == documents[-2:]
    with pytest.raises(ValueError, match="text_file"):
        task.load()


def bits_per_byte_by_hand(run, documents):
    """lm-eval's rolling log-likelihood: each document from the end-of-text token, every token scored."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run).eval()
    tokenizer = AutoTokenizer.from_pretrained(run)
    nats, size = 0.0, 0
    for document in documents:
        ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer(document, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits.double()
        nats -= logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).sum().item()
        size += len(document.encode("utf-8"))
    return nats / size / math.log(2)


@pytest.mark.slow
def test_lm_eval_scores_a_run_offline_with_its_own_likelihood(tmp_path):
    run = tmp_path / "run"
    train_lm.main(["--model_config", "tiny", "--train_file", str(CORPUS), "--validation_articles", "2",
                   "--block_size", "64", "--max_steps", "20", "--per_device_train_batch_size", "4", "--use_cpu", "true",
                   "--disable_tqdm", "true", "--sample_max_new_tokens", "3", "--output_dir", str(run),
                   "--cache_dir", str(tmp_path / "cache")])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TOKENIZERS_PARALLELISM="false")
    command = [shutil.which("lm_eval", path=os.path.dirname(sys.executable)) or "lm_eval", "--model", "hf",
               "--model_args", f"pretrained={run},trust_remote_code=True", "--device", "cpu",
               "--include_path", str(TASKS), "--tasks", "serpent_text", "--output_path", str(tmp_path / "results"),
               "--metadata", json.dumps({"text_file": str(CORPUS), "last_articles": 2})]
    finished = subprocess.run(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    (results_file,) = glob.glob(str(tmp_path / "results" / "**" / "results_*.json"), recursive=True)
    scores = json.loads(open(results_file).read())["results"]["serpent_text"]
    bits = scores["bits_per_byte,none"]
    assert bits == pytest.approx(math.log2(scores["byte_perplexity,none"]), rel=1e-6)
    held_out = load_task_module().load(text_file=str(CORPUS), last_articles=2)["test"]["text"]
    assert bits == pytest.approx(bits_per_byte_by_hand(str(run), held_out), rel=1e-3)
    assert scores["word_perplexity,none"] > scores["byte_perplexity,none"] > 1
