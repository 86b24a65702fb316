"""The README's Python examples run as written, from a directory outside the repository. Only what needs the
Hub changes: "gpt2" becomes a GPT-2-style tokenizer folder (vocab.json + merges.txt, no padding token, GPT-2's
50,257 ids), loaded the way the README's offline comment says."""

import json
import re

import torch
from tokenizers import ByteLevelBPETokenizer

from .conftest import CORPUS, ROOT

GPT2_VOCABULARY = 50257


def readme_python():
    return "\n".join(re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S))


def gpt2_like_tokenizer_folder(folder):
    """A byte-level BPE trained on the test corpus, its vocabulary padded to GPT-2's size with unused entries."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([CORPUS.read_text()], vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    folder.mkdir()
    bpe.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), GPT2_VOCABULARY)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder


def test_the_readme_examples_run_as_written(tmp_path, monkeypatch):
    tokenizer_folder = gpt2_like_tokenizer_folder(tmp_path / "gpt2")
    code = readme_python()
    hub_tokenizer = 'AutoTokenizer.from_pretrained("gpt2")'
    assert code.count(hub_tokenizer) == 1
    local = f'AutoTokenizer.from_pretrained({str(tokenizer_folder)!r}, tokenizer_type="gpt2")'
    code = code.replace(hub_tokenizer, local)
    monkeypatch.chdir(tmp_path)  # not the repository: the examples must not need its files
    torch.manual_seed(0)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "my-serpent" / "model.safetensors").exists()
    assert namespace["reloaded"].config.compression_rates == [1.0, 0.5, 0.25]
    tokenizer, model = namespace["tokenizer"], namespace["model"]
    assert len(tokenizer) == GPT2_VOCABULARY and model.config.vocab_size >= len(tokenizer)
    assert namespace["more"].shape[1] == namespace["first"].sequences.shape[1] + 5
