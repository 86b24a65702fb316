"""The README's Python examples run as written. Only what needs the Hub changes: "gpt2" becomes a small
GPT-2-style tokenizer folder (vocab.json + merges.txt, no padding token, as ../shared/data/gpt2-bpe),
loaded the way the README's offline comment says."""

import re

import torch
from tokenizers import ByteLevelBPETokenizer

from .conftest import CORPUS, ROOT


def readme_python():
    return "\n".join(re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S))


def test_the_readme_examples_run_as_written(tmp_path, monkeypatch):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([CORPUS.read_text()], vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(tmp_path))
    code = readme_python()
    hub_tokenizer = 'AutoTokenizer.from_pretrained("gpt2")'
    assert code.count(hub_tokenizer) == 1 and code.count('"configs/tiny.json"') == 1
    code = code.replace(hub_tokenizer, f'AutoTokenizer.from_pretrained({str(tmp_path)!r}, tokenizer_type="gpt2")')
    code = code.replace('"configs/tiny.json"', repr(str(ROOT / "configs" / "tiny.json")))
    monkeypatch.chdir(tmp_path)  # the examples save "my-serpent" in the working directory
    torch.manual_seed(0)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "my-serpent" / "model.safetensors").exists()
    assert namespace["reloaded"].config.compression_rates == [1.0, 0.5, 0.25]
