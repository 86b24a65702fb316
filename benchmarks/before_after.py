"""Before/after speed of the same model at two git commits, measured in one run (CPU, one thread).

What it measures, for SeRpEnt `configs/small.json` (each tree's own file; random init after
torch.manual_seed(0), float32), once with the code of each tree:
    * decode ms/token at batch 1 and 16: a 16-token prompt (untimed prefill with use_cache=True),
      then --new-tokens cached greedy steps `model(tok, cache=cache)` (the keyword is taken from
      inspect.signature of the tree's forward: `past_key_values` where `cache` is not accepted),
      under torch.inference_mode;
    * prefill tokens/s at L = 1024 and 4096, batch 1: model(ids, use_cache=True, logits_to_keep=1)
      under torch.inference_mode;
    * training tokens/s at B = 4, L = 256 and 1024: forward + backward with labels = ids
      (common.train_step; no optimiser step);
    * lines of code: `wc -l` of modeling/*.py and serpent_hf/*.py (not recursive) in each tree.
It prints a table with after/before ratios against the limits of issue 15 (decode ms/token
after <= 1.15x before; training and prefill tokens/s after >= 0.95x before) and writes JSON
(machine, both trees' commits and import paths, every timing) to --output.

How: `--before` (and `--after`, if it is not a directory) is checked out with
`git worktree add --detach` into a temporary directory, removed at the end. Each tree gets its
own worker process (this script with --worker TREE; PYTHONPATH=TREE) that loads `serpent_hf`
from TREE/serpent_hf and `serpent_hf.modeling` / `.training` / `.model_cards` from TREE's
modeling/, training/, model_cards/ folders (a finder placed first on sys.meta_path, ahead of
the editable install's hook, which maps those names to the main checkout), checks that every
serpent_hf module it loaded comes from TREE, and reports the file of serpent_hf.modeling. Both
workers stay alive for the whole run and answer one JSON line on stdout per request; the
timing helpers are this checkout's benchmarks/common.py for both trees, so only the model code
differs. Each (metric, setting) runs first once untimed in each worker (warm-up), then in
--rounds rounds, before and after back to back, alternating which goes first; figures are
medians over rounds; the verdict reads the paired ratio (median over rounds of after/before
within a round, which cancels load drifting between rounds), printed with its per-round range.
On a shared machine the noise can exceed the limits with few rounds: run an A/A comparison
(--after equal to --before) to see it, and use the default --rounds 5 or more for a verdict.

Run from the repository root (one torch thread; ~5-10 minutes with the defaults on this 2-core machine):
    python benchmarks/before_after.py --before 0604e8f --output benchmarks/results/before-after-cpu.json
    python benchmarks/before_after.py --before 0604e8f --after HEAD       # committed HEAD, not the working tree
    python benchmarks/before_after.py --before 0604e8f --after /path/to/other/worktree
    python benchmarks/before_after.py --before 0604e8f --rounds 1 --new-tokens 8 --lengths 256 \\
        --train-lengths 128 --output /tmp/before-after-smoke.json                               # smoke run, ~1 min
--after defaults to the working tree of this checkout (uncommitted changes included).
"""

import argparse
import hashlib
import importlib.abc
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (imports torch, not serpent_hf: the worker installs its finder first)
from common import REPO, fmt, ratio  # noqa: E402

DECODE_LIMIT = 1.15  # issue 15: decode ms/token after <= 1.15x before
THROUGHPUT_LIMIT = 0.95  # issue 15: training and prefill tokens/s after >= 0.95x before
PROMPT_LENGTH = 16
PACKAGE_FOLDERS = {"serpent_hf": "serpent_hf", "serpent_hf.modeling": "modeling", "serpent_hf.training": "training",
                   "serpent_hf.model_cards": "model_cards"}  # as setup.py's package_dir
COUNTED_FOLDERS = ("modeling", "serpent_hf")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="commit (or a directory holding a checkout) measured as 'before'")
    parser.add_argument("--after", default=None,
                        help="directory of a checkout, or a commit (checked out into a temporary worktree); "
                             "default: this checkout's working tree")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per (metric, setting)")
    parser.add_argument("--new-tokens", type=int, default=128, help="cached decoding steps timed per round")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16], help="decode batch sizes (none: no decode)")
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096], help="prefill lengths, batch 1 (none: no prefill)")
    parser.add_argument("--train-lengths", type=int, nargs="*", default=[256, 1024], help="training lengths (none: no training)")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--config", default="configs/small.json", help="model config, relative to each tree")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the workers")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "before-after-cpu.json"))
    parser.add_argument("--after-optimize-for-cpu", action="store_true",
                        help="apply serpent_hf.optimize_for_cpu (opt-in weight layout, removed in issue 22) to the "
                             "'after' model, in a tree that still has it")
    parser.add_argument("--optimize-for-cpu", action="store_true", help=argparse.SUPPRESS)  # internal: worker side
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)  # internal: run as a tree's worker
    args = parser.parse_args()
    if args.worker is None and args.before is None:
        parser.error("--before is required")
    return args


# ---------------------------------------------------------------- worker (one per tree)


class TreeFinder(importlib.abc.MetaPathFinder):
    """Maps serpent_hf and its folder subpackages to one tree, as the editable install maps them to the checkout."""

    def __init__(self, tree):
        self.folders = {name: Path(tree) / folder for name, folder in PACKAGE_FOLDERS.items()
                        if (Path(tree) / folder / "__init__.py").is_file()}

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None  # submodules are found through their parent's __path__, which lies in the tree
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def import_from_tree(tree):
    """Import serpent_hf (and serpent_hf.modeling) from `tree`; fail if any of its modules comes from elsewhere."""
    tree = Path(tree).resolve()
    assert not any(name == "serpent_hf" or name.startswith("serpent_hf.") for name in sys.modules), "imported too early"
    sys.meta_path.insert(0, TreeFinder(tree))
    import serpent_hf
    import serpent_hf.modeling

    outside = {name: module.__file__ for name, module in sys.modules.items()
               if (name == "serpent_hf" or name.startswith("serpent_hf.")) and getattr(module, "__file__", None)
               and not Path(module.__file__).resolve().is_relative_to(tree)}
    if outside:
        raise ImportError(f"modules of serpent_hf loaded from outside {tree}: {outside}")
    return serpent_hf


class Worker:
    """The model of one tree and the measured operations; one request in, one result out."""

    def __init__(self, tree, config_path, threads, optimize_for_cpu=False):
        import torch

        self.torch = torch
        serpent_hf = import_from_tree(tree)
        common.setup_torch(threads)
        torch.manual_seed(0)
        config = serpent_hf.SeRpEntConfig.from_pretrained(Path(tree) / config_path)
        self.model = serpent_hf.SeRpEntForCausalLM(config)
        if optimize_for_cpu:
            serpent_hf.optimize_for_cpu(self.model)
        parameters = inspect.signature(self.model.forward).parameters
        self.cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self.logits_to_keep = "logits_to_keep" in parameters
        self.warm = set()
        self.info = {
            "tree": str(Path(tree).resolve()),
            "serpent_hf_file": serpent_hf.__file__,
            "modeling_file": sys.modules["serpent_hf.modeling"].__file__,
            "cache_keyword": self.cache_keyword,
            "optimize_for_cpu": optimize_for_cpu,
            "logits_to_keep": self.logits_to_keep,
            "parameters": common.count_parameters(self.model),
            "torch_threads": torch.get_num_threads(),
            "config_sha256": hashlib.sha256((Path(tree) / config_path).read_bytes()).hexdigest(),
        }

    def _cache_of(self, out):
        cache = getattr(out, "cache", None)
        return cache if cache is not None else getattr(out, "past_key_values", None)

    def _prefill(self, ids):
        extra = {"logits_to_keep": 1} if self.logits_to_keep else {}
        with self.torch.inference_mode():
            return self.model(input_ids=ids, use_cache=True, **extra)

    def decode(self, batch, new_tokens):
        """Seconds for new_tokens cached greedy steps after an untimed prefill of a 16-token prompt."""
        self.model.eval()
        out = self._prefill(common.token_ids(batch, PROMPT_LENGTH, seed=batch))
        cache, logits = self._cache_of(out), out.logits

        @self.torch.inference_mode()
        def steps():
            token = logits[:, -1:].argmax(-1)
            for _ in range(new_tokens):
                token = self.model(token, **{self.cache_keyword: cache}, use_cache=True).logits[:, -1:].argmax(-1)

        return common.timed(steps)[0]

    def prefill(self, length):
        self.model.eval()
        ids = common.token_ids(1, length)
        return common.timed(lambda: self._prefill(ids))[0]

    def train(self, batch, length):
        self.model.train()
        ids = common.token_ids(batch, length)
        seconds = common.timed(lambda: common.train_step(self.model, ids))[0]
        self.model.zero_grad(set_to_none=True)
        return seconds

    def run(self, request):
        op = request["op"]
        call = {"decode": lambda: self.decode(request["batch"], request["new_tokens"]),
                "prefill": lambda: self.prefill(request["length"]),
                "train": lambda: self.train(request["batch"], request["length"])}[op]
        key = json.dumps(request, sort_keys=True)
        if key not in self.warm:  # first call of a setting: untimed (first-touch of its buffers, lazy copies)
            call()
            self.warm.add(key)
        return {"seconds": call()}


def worker_main(args):
    """Protocol: one JSON line on stdout when ready (the tree's import paths), then one JSON line per request
    read from stdin; {"op": "exit"} or end of input stops. Everything else the process prints goes to stderr."""
    protocol = sys.stdout
    sys.stdout = sys.stderr
    try:
        worker = Worker(args.worker, args.config, args.threads, args.optimize_for_cpu)
    except Exception as error:
        protocol.write(json.dumps({"ready": False, "error": f"{type(error).__name__}: {error}"}) + "\n")
        protocol.flush()
        raise
    protocol.write(json.dumps({"ready": True, **worker.info}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "exit":
            break
        protocol.write(json.dumps(worker.run(request)) + "\n")
        protocol.flush()


# ---------------------------------------------------------------- parent: trees, workers, rounds, report


def git(*arguments, cwd=REPO):
    return subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def resolve_tree(spec, role, scratch, created):
    """(tree path, description) for a directory or a commit; a commit is checked out into a detached worktree."""
    if spec is None:
        spec = str(REPO)
    if Path(spec).is_dir():
        tree = Path(spec).resolve()
        commit = git("rev-parse", "HEAD", cwd=tree)
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *COUNTED_FOLDERS, cwd=tree)
        return tree, {"spec": spec, "path": str(tree), "commit": commit, "worktree": False,
                      "modeling_or_serpent_hf_dirty": bool(dirty)}
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"--{role} {spec!r} is neither a directory nor a commit of {REPO}") from None
    tree = Path(scratch) / role
    git("worktree", "add", "--detach", str(tree), commit)
    created.append(tree)
    return tree, {"spec": spec, "path": str(tree), "commit": commit, "worktree": True,
                  "modeling_or_serpent_hf_dirty": False}


def count_lines(tree):
    """`wc -l` (newline count) of FOLDER/*.py for modeling/ and serpent_hf/, not recursive."""
    counts = {}
    for folder in COUNTED_FOLDERS:
        files = {path.name: path.read_bytes().count(b"\n") for path in sorted((Path(tree) / folder).glob("*.py"))}
        counts[folder] = {"total": sum(files.values()), "files": files}
    counts["total"] = sum(counts[folder]["total"] for folder in COUNTED_FOLDERS)
    return counts


class WorkerProcess:
    def __init__(self, role, tree, args, log_dir):
        self.role = role
        self.log = Path(log_dir) / f"{role}.stderr"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--config", args.config,
                   "--threads", str(args.threads)]
        if role == "after" and args.after_optimize_for_cpu:
            command.append("--optimize-for-cpu")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            text=True, cwd=tree, env=env)

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            tail = "\n".join(self.log.read_text().strip().splitlines()[-15:])
            raise RuntimeError(f"the {self.role} worker exited (status {self.process.returncode}); its stderr ends:\n{tail}")
        return json.loads(line)

    def ready(self):
        info = self._read()
        if not info.get("ready"):
            self._read()  # raises with the stderr tail once the process has exited
        return info

    def request(self, payload):
        self.process.stdin.write(json.dumps(payload) + "\n")
        self.process.stdin.flush()
        return self._read()["seconds"]

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def settings(args):
    """(name, request, unit, converts seconds to the reported value, limit kind) for every measured setting."""
    out = []
    for batch in args.batches:
        out.append((f"decode ms/token, batch {batch}", {"op": "decode", "batch": batch, "new_tokens": args.new_tokens},
                    "ms/token", lambda s: 1e3 * s / args.new_tokens, "decode"))
    for length in args.lengths:
        out.append((f"prefill tokens/s, L={length}", {"op": "prefill", "length": length},
                    "tokens/s", lambda s, length=length: length / s, "throughput"))
    for length in args.train_lengths:
        out.append((f"training tokens/s, B={args.train_batch} L={length}",
                    {"op": "train", "batch": args.train_batch, "length": length},
                    "tokens/s", lambda s, length=length: args.train_batch * length / s, "throughput"))
    return out


def measure(workers, args):
    results = []
    plan = settings(args)
    for name, request, unit, convert, kind in plan:
        results.append({"metric": name, "request": request, "unit": unit, "kind": kind,
                        "before_seconds": [], "after_seconds": []})
    for round_index in range(args.rounds):
        for index, (name, request, _, _, _) in enumerate(plan):
            order = ["before", "after"] if (round_index + index) % 2 == 0 else ["after", "before"]
            for role in order:
                results[index][f"{role}_seconds"].append(workers[role].request(request))
            print(f"  round {round_index + 1}/{args.rounds} {name}: "
                  + ", ".join(f"{role} {plan[index][3](results[index][f'{role}_seconds'][-1]):.2f}" for role in order),
                  flush=True)
    for record, (_, _, _, convert, kind) in zip(results, plan):
        for role in ("before", "after"):
            record[role] = convert(common.median(record[f"{role}_seconds"]))
        record["after_over_before"] = ratio(record["after"], record["before"])
        per_round = [convert(a) / convert(b) for a, b in zip(record["after_seconds"], record["before_seconds"])]
        record["after_over_before_per_round"] = per_round
        record["after_over_before_paired"] = paired = common.median(per_round)
        # The verdict reads the paired ratio: before and after of a round run back to back, so load that drifts
        # between rounds cancels in it, which it does not in the ratio of the two medians.
        if kind == "decode":
            record.update(limit=f"<= {DECODE_LIMIT}", met=paired <= DECODE_LIMIT)
        else:
            record.update(limit=f">= {THROUGHPUT_LIMIT}", met=paired >= THROUGHPUT_LIMIT)
    return results


def report(results, lines, trees, args):
    print(f"\nAfter vs before, SeRpEnt {args.config}, {args.threads} thread(s), medians of {args.rounds} round(s) "
          f"(decode: {args.new_tokens} tokens after a {PROMPT_LENGTH}-token prompt)")
    for role in ("before", "after"):
        tree = trees[role]
        print(f"  {role}: {tree['commit'][:10]}{' + uncommitted changes' if tree['modeling_or_serpent_hf_dirty'] else ''}"
              f" ({tree['spec']}), serpent_hf.modeling from {tree['modeling_file']}")
    rows = [[r["metric"], fmt(r["before"], ".2f"), fmt(r["after"], ".2f"), fmt(r["after_over_before"], ".3f", "x"),
             fmt(r["after_over_before_paired"], ".3f", "x"),
             f"{min(r['after_over_before_per_round']):.3f}-{max(r['after_over_before_per_round']):.3f}",
             r["limit"], "MET" if r["met"] else "MISSED"] for r in results]
    common.print_table(["metric", "before", "after", "ratio of medians", "after/before paired", "per-round range", "limit",
                        "issue 15 (paired)"], rows)
    print("Decode ratios are time (lower is faster); prefill and training ratios are throughput (higher is faster).\n"
          "after/before paired: median over rounds of the ratio within a round (the verdict); the per-round range shows\n"
          "the noise (an A/A run, --after equal to --before, measures it on this machine).")

    print("\nLines (wc -l of FOLDER/*.py, not recursive)")
    rows = []
    for folder in (*COUNTED_FOLDERS, "total"):
        before, after = (lines[role][folder] if folder == "total" else lines[role][folder]["total"]
                         for role in ("before", "after"))
        rows.append([folder if folder == "total" else f"{folder}/*.py", before, after, f"{after - before:+d}"])
    common.print_table(["files", "before", "after", "after - before"], rows)
    changed = []
    for folder in COUNTED_FOLDERS:
        before, after = lines["before"][folder]["files"], lines["after"][folder]["files"]
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                changed.append(f"{folder}/{name}: {before.get(name, '-')} -> {after.get(name, '-')}")
    if changed:
        print("  changed files: " + "; ".join(changed))


def main():
    args = parse_args()
    if args.worker:
        worker_main(args)
        return
    machine = common.machine_info()
    machine["torch_threads"] = args.threads  # the workers' setting (this process does not compute)
    print(f"CPU: {machine['cpu_model']} ({machine['cpu_count']} cores), torch {machine['torch']} "
          f"({args.threads} thread(s) per worker), transformers {machine['transformers']}")
    scratch = Path(tempfile.mkdtemp(prefix="serpent-before-after-"))
    created, workers = [], {}
    try:
        trees, paths = {}, {}
        for role, spec in (("before", args.before), ("after", args.after)):
            paths[role], trees[role] = resolve_tree(spec, role, scratch, created)
        lines = {role: count_lines(paths[role]) for role in trees}
        for role in trees:
            workers[role] = WorkerProcess(role, paths[role], args, scratch)
        for role, worker in workers.items():
            info = worker.ready()
            trees[role].update(info)
            print(f"{role} worker: serpent_hf.modeling from {info['modeling_file']} "
                  f"({info['parameters']:,} parameters, cache keyword `{info['cache_keyword']}`)", flush=True)
        if trees["before"]["config_sha256"] != trees["after"]["config_sha256"]:
            print(f"note: {args.config} differs between the trees; each tree runs its own")
        results = measure(workers, args)
        report(results, lines, trees, args)
        common.write_json(args.output, {"benchmark": "before-after", "args": vars(args), "machine": machine,
                                        "trees": trees, "lines": lines, "results": results,
                                        "limits": {"decode_after_over_before_max": DECODE_LIMIT,
                                                   "throughput_after_over_before_min": THROUGHPUT_LIMIT}})
    finally:
        for worker in workers.values():
            worker.close()
        for tree in created:
            done = subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"could not remove the worktree {tree}: {done.stderr.strip()} (run `git worktree remove --force {tree}`)")
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
