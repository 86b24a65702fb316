"""`train_lm.py --push_to_hub` uploads the model, tokenizer, card, results and plots, checked
against a local HTTP server that speaks the parts of the Hub protocol the upload uses.

The Hub cannot be reached from the test machines, so the test starts a server on 127.0.0.1
(a free port, loopback only) and points the training subprocess at it with HF_ENDPOINT and a
fake token. The server implements what huggingface_hub's `create_repo` + `upload_folder` call:

    POST /api/repos/create                      create the repository
    POST /api/models/{repo}/preupload/{rev}     answer "regular" for every file (inline upload, no LFS/Xet)
    POST /api/models/{repo}/commit/{rev}        ndjson: a header line, then one base64 file per line
    POST /api/validate-yaml, GET /api/whoami-v2 (used by other upload paths)

Anything else is answered 404 and recorded, so an unexpected call fails the test visibly.
"""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load as load_safetensors

from .conftest import ROOT

TOKEN = "hf_fake_token_for_the_local_test_server"
REPO = "tester/tiny-serpent"


class FakeHub:
    """Repositories: {repo_id: {path: bytes}}; every request is logged as (method, path)."""

    def __init__(self):
        self.repos, self.requests, self.unexpected, self.commits = {}, [], [], []
        self.tokens = set()


def make_handler(hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet
            pass

        def _reply(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self):
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _route(self, method):
            path = self.path.split("?")[0]
            hub.requests.append((method, path))
            hub.tokens.add(self.headers.get("Authorization"))
            endpoint = f"http://{self.headers['Host']}"
            body = self._body() if method == "POST" else b""
            parts = path.strip("/").split("/")
            if method == "GET" and path == "/api/whoami-v2":
                return self._reply(200, {"type": "user", "name": "tester", "orgs": [], "auth": {}})
            if method == "POST" and path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
                hub.repos.setdefault(repo_id, {})
                return self._reply(200, {"url": f"{endpoint}/{repo_id}", "name": repo_id, "id": repo_id})
            if method == "POST" and path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if method == "POST" and len(parts) == 6 and parts[:2] == ["api", "models"]:
                repo_id, action = f"{parts[2]}/{parts[3]}", parts[4]
                if repo_id not in hub.repos:
                    return self._reply(404, {"error": f"Repository {repo_id} not found"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False, "oid": None} for f in files]})
                if action == "commit":
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = lines[0]
                    assert header["key"] == "header", header
                    for line in lines[1:]:
                        if line["key"] != "file" or line["value"]["encoding"] != "base64":
                            return self._reply(400, {"error": f"unsupported commit operation {line['key']}"})
                        hub.repos[repo_id][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    hub.commits.append(header["value"]["summary"])
                    oid = f"{len(hub.commits):040x}"
                    return self._reply(200, {"commitUrl": f"{endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                                             "pullRequestUrl": None})
            hub.unexpected.append((method, path))
            return self._reply(404, {"error": f"not implemented by the test server: {method} {path}"})

        def do_GET(self):
            self._route("GET")

        def do_HEAD(self):
            self._route("HEAD")

        def do_POST(self):
            self._route("POST")

    return Handler


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield hub
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_push_to_hub_uploads_model_tokenizer_and_card(fake_hub, tmp_path):
    output_dir = tmp_path / "run"
    env = dict(os.environ, HF_ENDPOINT=fake_hub.endpoint, HF_TOKEN=TOKEN, HF_HUB_DISABLE_TELEMETRY="1",
               HF_DATASETS_OFFLINE="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.pop("HF_HUB_OFFLINE", None)  # the upload must go out (to the local server)
    command = [sys.executable, "-m", "serpent_hf.training.train_lm",
               "--model_config", str(ROOT / "configs" / "tiny.json"),
               "--train_file", str(ROOT / "tests" / "fixtures" / "tiny_corpus.txt"), "--validation_articles", "2",
               "--train_tokenizer", "512", "--block_size", "64", "--max_steps", "3", "--save_steps", "2",
               "--per_device_train_batch_size", "4", "--max_eval_samples", "4", "--use_cpu", "true",
               "--report_to", "none", "--disable_tqdm", "true", "--sample_max_new_tokens", "5",
               "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(output_dir),
               "--push_to_hub", "true", "--hub_model_id", REPO.split("/")[1]]  # the Hub adds the namespace
    finished = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    assert fake_hub.unexpected == []
    assert fake_hub.tokens == {f"Bearer {TOKEN}"}
    assert ("POST", "/api/repos/create") in fake_hub.requests
    assert len(fake_hub.commits) == 1  # one commit with everything, none from the Trainer's own pushes
    files = fake_hub.repos[REPO]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
                 "eval_results.json", "training_curves.png", "deltas.png"):
        assert name in files, f"{name} was not pushed; got {sorted(files)}"
        assert files[name] == (output_dir / name).read_bytes(), name
    assert not any(path.startswith("checkpoint-") for path in files)  # checkpoints stay local
    assert (output_dir / "checkpoint-2").is_dir()

    weights = load_safetensors(files["model.safetensors"])
    assert "model.embeddings.weight" in weights and weights["model.embeddings.weight"].shape == (512, 64)
    config = json.loads(files["config.json"])
    assert config["model_type"] == "serpent"
    for reference in config["auto_map"].values():  # the code that trust_remote_code=True runs went up too
        assert reference.partition(".")[0] + ".py" in files, reference
    assert {"modeling.py", "block.py", "remote_code.py"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert f'from_pretrained("{REPO}")' in card.text
    pushed_metrics = {result.metric_name for result in card.data.eval_results}
    assert {"Top-1 accuracy", "Top-5 accuracy", "Perplexity"} <= pushed_metrics


PUSH = """
import sys
import torch
from serpent_hf import SeRpEntConfig, SeRpEntForCausalLM

torch.manual_seed(0)
config = SeRpEntConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4)
SeRpEntForCausalLM(config).save_pretrained(sys.argv[1] + "/model", push_to_hub=True, repo_id="tester/model")
config.save_pretrained(sys.argv[1] + "/config", push_to_hub=True, repo_id="tester/config")
SeRpEntForCausalLM(config).push_to_hub("tester/pushed")
"""


def test_save_pretrained_and_push_to_hub_upload_the_code(fake_hub, tmp_path):
    """Every way transformers pushes (a model's save_pretrained(push_to_hub=True) and push_to_hub, and a
    config's save_pretrained(push_to_hub=True)) uploads config.json with auto_map and the code it names."""
    env = dict(os.environ, HF_ENDPOINT=fake_hub.endpoint, HF_TOKEN=TOKEN, HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.pop("HF_HUB_OFFLINE", None)
    finished = subprocess.run([sys.executable, "-c", PUSH, str(tmp_path)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    for repo in ("tester/model", "tester/config", "tester/pushed"):
        files = fake_hub.repos[repo]
        auto_map = json.loads(files["config.json"])["auto_map"]
        needed = {reference.partition(".")[0] + ".py" for reference in auto_map.values()}
        assert needed | {"modeling.py", "block.py"} <= set(files), (repo, sorted(files))
