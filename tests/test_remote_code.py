"""A saved checkpoint loads with transformers alone: `from_pretrained(path, trust_remote_code=True)`
in a process where serpent_hf (and the old top-level `modeling` / `training`) cannot be imported
computes what the package computes: the same logits, the same greedy tokens.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers.dynamic_module_utils import get_relative_import_files

from serpent_hf import SeRpEntForSequenceClassification
from serpent_hf.remote_code import auto_map

from .conftest import run_without_serpent_hf, tiny_config, tiny_model

PROMPT = [[5, 17, 3, 42, 8, 9, 23, 61, 7, 2, 88, 14]]
NEW_TOKENS = 10

LOADER = """
import json
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

lm_path, classifier_path, out_path = sys.argv[1:4]
prompt = torch.tensor(json.loads(sys.argv[4]))
config = AutoConfig.from_pretrained(lm_path, trust_remote_code=True)
lm = AutoModelForCausalLM.from_pretrained(lm_path, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(lm_path, trust_remote_code=True).eval()
classifier = AutoModelForSequenceClassification.from_pretrained(classifier_path, trust_remote_code=True).eval()
with torch.no_grad():
    results = {
        "classes": [type(config).__name__, type(lm).__name__, type(base).__name__, type(classifier).__name__],
        "modules": sorted({type(m).__module__.split(".")[0] for m in (config, lm, base, classifier)}),
        "logits": lm(prompt).logits,
        "hidden": base(prompt).last_hidden_state,
        "greedy": lm.generate(prompt, max_new_tokens=int(sys.argv[5]), do_sample=False),
        "classifier": classifier(prompt).logits,
    }
results["imported"] = sorted({name.split(".")[0] for name in sys.modules} & BLOCKED)
lm.save_pretrained(out_path + "-resaved")  # a checkpoint loaded from its code saves that code again
results["resaved"] = AutoModelForCausalLM.from_pretrained(out_path + "-resaved", trust_remote_code=True)(prompt).logits
torch.save(results, out_path)
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote")
    lm = tiny_model(seed=1)
    torch.manual_seed(2)
    classifier = SeRpEntForSequenceClassification(tiny_config(num_labels=3)).eval()
    lm.save_pretrained(folder / "lm")
    classifier.save_pretrained(folder / "classifier")
    return folder, lm, classifier


def test_a_checkpoint_names_its_code_for_every_auto_class(saved):
    folder, _, _ = saved
    for name in ("lm", "classifier"):
        config = json.loads((folder / name / "config.json").read_text())
        assert config["auto_map"] == {
            "AutoConfig": "configuration_serpent.SeRpEntConfig",
            "AutoModel": "modeling_serpent.SeRpEntModel",
            "AutoModelForCausalLM": "modeling_serpent.SeRpEntForCausalLM",
            "AutoModelForSequenceClassification": "modeling_serpent_classification.SeRpEntForSequenceClassification",
        }


def test_the_checkpoint_holds_exactly_the_files_the_loader_fetches(saved):
    """transformers fetches each auto_map module and, recursively, what it imports relatively."""
    folder, _, _ = saved
    checkpoint = folder / "lm"
    fetched = set()
    for reference in auto_map().values():
        module = checkpoint / (reference.rpartition(".")[0] + ".py")
        fetched |= {module.name, *(Path(path).name for path in get_relative_import_files(module))}
    assert fetched == {path.name for path in checkpoint.glob("*.py")}
    assert {"modeling.py", "block.py", "resampling.py", "configuration_serpent.py"} <= fetched


def test_the_checkpoint_loads_and_generates_without_serpent_hf(saved):
    folder, lm, classifier = saved
    out = folder / "results.pt"
    finished = run_without_serpent_hf(LOADER, folder / "lm", folder / "classifier", out, json.dumps(PROMPT), NEW_TOKENS,
                                      cwd=folder, modules_cache=folder / "modules")
    assert finished.returncode == 0, finished.stderr[-4000:]
    remote = torch.load(out)
    assert remote["imported"] == [] and remote["modules"] == ["transformers_modules"]
    assert remote["classes"] == ["SeRpEntConfig", "SeRpEntForCausalLM", "SeRpEntModel",
                                 "SeRpEntForSequenceClassification"]
    prompt = torch.tensor(PROMPT)
    with torch.no_grad():
        logits = lm(prompt).logits
        greedy = lm.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)
        torch.testing.assert_close(remote["logits"], logits, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(remote["resaved"], logits, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(remote["hidden"], lm.model(prompt).last_hidden_state, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(remote["classifier"], classifier(prompt).logits, rtol=1e-6, atol=1e-6)
    assert greedy.shape[1] == len(PROMPT[0]) + NEW_TOKENS
    assert torch.equal(remote["greedy"], greedy)
