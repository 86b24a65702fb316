"""Mutation check: plant plausible bugs in a copy of the package, one at a time, and show the tests catch each.

    python scripts/mutation_check.py                    # every mutant; writes benchmarks/results/mutation_check.txt
    python scripts/mutation_check.py --only tie_side    # some of them, by name

The repository is copied to a temporary folder laid out as an installed wheel lays it out (modeling/, training/
and model_cards/ inside serpent_hf/), so the tests run there import the copy, never this checkout (the script
checks that). Each mutant is one text substitution in one file; the substitution must find its text exactly
once, so when the code changes the script fails loudly instead of planting nothing. For each mutant a fast subset
of the suite (TESTS, without slow tests) runs until its first failure; the table names that failing test, or
MISSED. The script exits with status 1 if any mutant survives (or the unmutated copy fails a test).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = {"modeling": "serpent_hf/modeling", "training": "serpent_hf/training",
                   "model_cards": "serpent_hf/model_cards"}
# Fast files first: a caught mutant usually stops within seconds.
TESTS = [
    "tests/test_integer_rules.py",
    "tests/test_clock_exactness.py",
    "tests/test_fixtures.py",
    "tests/test_resampling.py",
    "tests/test_promises.py",
    "tests/test_generation.py",
    "tests/test_decoding.py",
    "tests/test_causality.py",
    "tests/test_kernels.py",
    "tests/test_compiled_decoding.py",
    "tests/test_rate_loss.py",
    "tests/test_errors.py",
    "tests/test_scan.py",
    "tests/test_s4d.py",
    "tests/test_upcycle.py",
    "tests/test_compression_operator.py",
    "tests/test_bidirectional_resampling.py",
    "tests/test_lra.py",
]
IGNORED = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "runs", "outputs", "__pycache__", ".hypothesis",
                                 ".pytest_cache", "*.egg-info", "build", "dist")


@dataclass
class Mutant:
    name: str
    path: str  # as in the repository
    old: str
    new: str
    why: str


MUTANTS = [
    Mutant("tie_side", "modeling/resampling.py",
           'first = torch.searchsorted(plan.times.contiguous(), grid.contiguous(), side="left")',
           'first = torch.searchsorted(plan.times.contiguous(), grid.contiguous(), side="right")',
           "a grid point exactly on a clock value is emitted by the next element"),
    Mutant("neighbor_off_by_one", "modeling/resampling.py",
           "index = first.clamp(max=length - 1).unsqueeze(-1) + K - torch.arange(K, device=x.device)",
           "index = first.clamp(max=length - 1).unsqueeze(-1) + K - 1 - torch.arange(K, device=x.device)",
           "the K neighbours end one element before the emitter"),
    Mutant("no_quantisation", "modeling/resampling.py",
           "quantised = (torch.round(delta / CLOCK_QUANTUM) * CLOCK_QUANTUM).clamp(",
           "quantised = (delta).clamp(",
           "Δ is not rounded to multiples of 2^-20"),
    Mutant("no_kappa_floor", "modeling/resampling.py",
           ".clamp(min=self.min_delta, max=1.0)",
           ".clamp(max=1.0)",
           "rounding may take Δ below κ"),
    Mutant("padding_moves_clock", "modeling/resampling.py",
           "            delta = delta * valid\n",
           "            delta = delta\n",
           "padding is not masked out of Δ"),
    Mutant("sample_mask_inverted", "modeling/resampling.py",
           "return self.compression_basis.combine(gaps, neighbors) * plan.sample_valid.unsqueeze(-1)",
           "return self.compression_basis.combine(gaps, neighbors) * (~plan.sample_valid).unsqueeze(-1)",
           "compressed samples masked where they are real instead of past a row's samples"),
    Mutant("filler_not_skipped", "modeling/branch.py",
           "outputs, mixer_state = self.mixer(samples, plan.sample_valid,",
           "outputs, mixer_state = self.mixer(samples, None,",
           "the SSM steps over the filler after a short row's samples"),
    Mutant("decompress_tie", "modeling/resampling.py",
           "            latest = torch.floor(times)\n",
           "            latest = torch.ceil(times) - 1\n",
           "a position whose clock is exactly an integer reads the sample before"),
    Mutant("last_output_off_by_one", "modeling/resampling.py",
           "last_output = _rows(table, plan.new_counts)",
           "last_output = _rows(table, (plan.new_counts - 1).clamp(min=0))",
           "the state after a chunk keeps the output of its second-to-last sample"),
    Mutant("advance_keeps_wrong_neighbors", "modeling/resampling.py",
           "neighbor_inputs=torch.cat([previous.neighbor_inputs, x], dim=1)[:, -K:],",
           "neighbor_inputs=torch.cat([previous.neighbor_inputs, x], dim=1)[:, -K - 1 : -1],",
           "the state after a chunk remembers the K elements before its last"),
    Mutant("step_mask_inverted", "modeling/branch.py",
           "valid=emits, state=state.mixer,",
           "valid=~emits, state=state.mixer,",
           "a decoding step: the rows that do not emit step their SSM, the rows that emit do not"),
    Mutant("step_every_row_steps", "modeling/branch.py",
           "valid=emits, state=state.mixer,",
           "valid=None, state=state.mixer,",
           "a decoding step: every row's SSM steps, also where the branch emits no sample"),
    Mutant("masked_step_shifts_conv_window", "modeling/mamba_mixer.py",
           "            state.conv.copy_(torch.where(valid.view(-1, 1, 1), state.conv, window))\n",
           "",
           "a row that emits no sample still shifts its SSM's convolution window"),
    Mutant("skip_unless_every_row_emits", "modeling/branch.py",
           "if not host_reads_are_free(x.device) or bool(emits.any()):",
           "if not host_reads_are_free(x.device) or bool(emits.all()):",
           "a CPU decoding step skips the SSM unless every row emits (the rows that emit lose their sample)"),
    Mutant("step_keeps_old_output", "modeling/branch.py",
           "state.resampling.copy_(self.resampler.advance(x, plan, last_output))",
           "state.resampling.copy_(self.resampler.advance(x, plan, state.resampling.last_output))",
           "a decoding step never stores the SSM output of the sample it emitted"),
    Mutant("padding_in_delta_window", "modeling/selectivity.py",
           "            u = u * valid.unsqueeze(-1)\n",
           "            u = u\n",
           "padding scores enter θ_Δ's window (delta_window > 1)"),
    Mutant("kernels_loaded_on_cpu", "modeling/kernels.py",
           "    if not tensor.is_cuda:\n        if use_kernels is True:",
           "    _load(name)\n    if not tensor.is_cuda:\n        if use_kernels is True:",
           "the kernel packages are imported on a CPU"),
    Mutant("warning_every_call", "modeling/kernels.py",
           "@functools.lru_cache(maxsize=None)\ndef _warn_fallback(reason):",
           "def _warn_fallback(reason):",
           "the fallback warning repeats on every call"),
    Mutant("ssm_state_in_half_precision", "modeling/mamba_mixer.py",
           "ssm=torch.zeros(batch_size, self.state_size, self.intermediate_size, device=device, dtype=torch.float32),",
           "ssm=torch.zeros(batch_size, self.state_size, self.intermediate_size, device=device, dtype=dtype),",
           "an empty cache holds the SSM state in the model's (half) precision"),
    Mutant("lr_multiplier_not_passed", "training/train_lm.py",
           "        compressed_branch_lr_multiplier=model_args.compressed_branch_lr_multiplier,\n",
           "",
           "serpent-train drops --compressed_branch_lr_multiplier (the Trainer's 1.0 applies)"),
    Mutant("dataset_name_keeps_train_file", "training/arguments.py",
           '"dataset_name": ("train_file", "validation_file"),',
           '"dataset_name": ("validation_file",),',
           "--dataset_name leaves the run file's train_file in place, which wins"),
    Mutant("unset_ignored", "training/arguments.py",
           "        values.pop(name, None)\n    values = {**(defaults",
           "    values = {**(defaults",
           "--unset removes nothing"),
    Mutant("p95_is_p90", "training/trainer.py",
           "PERCENTILES = (0.05, 0.95)",
           "PERCENTILES = (0.05, 0.90)",
           "the logged 95th percentile of Δ is the 90th"),
    Mutant("host_read_while_compiling", "modeling/branch.py",
           'return device.type == "cpu" and not torch.compiler.is_compiling()',
           'return device.type == "cpu"',
           "a decoding step reads token ids and emissions on the host while torch.compile traces it"),
    Mutant("rate_counts_padding", "modeling/rate_loss.py",
           "elements = deltas.shape[1] * deltas.shape[3] if valid is None else valid.sum()",
           "elements = deltas.shape[1] * deltas.shape[3]",
           "the rate term averages Δ over padding too, so padded batches look compressed"),
    Mutant("rate_term_detached", "modeling/rate_loss.py",
           "speed = deltas.index_select(2, index).sum(dim=(1, 3)) / elements",
           "speed = deltas.detach().index_select(2, index).sum(dim=(1, 3)) / elements",
           "the rate term is reported but teaches θ_Δ nothing"),
    Mutant("rate_counted_per_micro_batch", "serpent_hf/modeling_serpent.py",
           "rate * share_of_accumulated_batch(labels, kwargs)", "rate",
           "with gradient accumulation the rate term is charged once per micro-batch"),
    Mutant("rate_charged_in_evaluation", "serpent_hf/modeling_serpent.py",
           "            if self.training:  # a training term", "            if True:  # a training term",
           "evaluation's loss (and the perplexity read from it) includes the rate term"),
    Mutant("rate_reads_the_cache_span_of_the_mask", "serpent_hf/modeling_serpent.py",
           "attention_mask[:, -outputs.deltas.shape[-1]:].bool()", "attention_mask.bool()",
           "a mask spanning the cache's tokens is laid over the new chunk's Δ"),
    Mutant("prefilled_cache_feeds_last_id_again", "serpent_hf/modeling_serpent.py",
           "    if prompt_as_embeddings:\n", "    if True:\n",
           "generate() from a cache that consumed every id feeds the last id a second time"),
    Mutant("padding_between_real_tokens_accepted", "serpent_hf/modeling_serpent.py",
           "    if hole.any():", "    if False:",
           "a mask with padding between real tokens is accepted (the convolution reads the padding)"),
    Mutant("residual_rounded_after_each_block", "modeling/block.py",
           "return BlockOutput(residual + mixed, states", "return BlockOutput((residual + mixed).to(mixed.dtype), states",
           "residual_in_fp32 rounds the stream back to half precision after every block"),
    Mutant("s4d_kernel_in_half_precision", "serpent_hf/modeling_serpent.py",
           '"log_dt", "log_A_real", "A_imag", "B", "C", ', "",
           "a half-precision checkpoint loads S4D's Δ, A, B and C in half precision"),
    # Shared math: code that the forward pass and the decoding step both call, so that they agree with each other
    # however wrong it is. Only a test against an independent reference (transformers' Mamba, the ODE the SSM
    # discretises, the formula in the docstring) catches these.
    Mutant("delta_ignores_its_range", "modeling/resampling.py",
           "self.compression_rate + (1.0 - self.compression_rate) * torch.sigmoid(logits)",
           "self.compression_rate + torch.sigmoid(logits)",
           "Δ = κ + sigmoid(θ_Δ) instead of κ + (1 - κ)·sigmoid(θ_Δ) (clamped at 1)"),
    Mutant("basis_width_not_exponentiated", "modeling/resampling.py",
           "/ self.log_widths.exp()) ** 2)", "/ self.log_widths) ** 2)",
           "the Gaussian basis reads log σ as σ"),
    Mutant("compression_gap_reversed", "modeling/resampling.py",
           "gaps = (grid.unsqueeze(-1) - _rows(all_times, index))", "gaps = (_rows(all_times, index) - grid.unsqueeze(-1))",
           "the compression basis reads t_n - j instead of j - t_n"),
    Mutant("decompression_gap_reversed", "modeling/resampling.py",
           "self.decompression_basis((times - latest).to(outputs.dtype))",
           "self.decompression_basis((latest - times).to(outputs.dtype))",
           "the decompression basis reads m_l - t_l instead of t_l - m_l"),
    Mutant("ssm_decay_base_two", "modeling/scan.py",
           "LOG2_E = math.log2(math.e)", "LOG2_E = 1.0",
           "the SSM decays by 2^(Δ·A) instead of exp(Δ·A), in the scan and in the step alike"),
    Mutant("mamba_delta_exp_not_softplus", "modeling/mamba_mixer.py",
           "delta = F.softplus(self.dt_proj(low_rank).float())", "delta = torch.exp(self.dt_proj(low_rank).float())",
           "Mamba's Δ is exp(dt_proj(·)) instead of softplus(dt_proj(·))"),
    Mutant("conv_without_silu", "modeling/kernels.py",
           "        return F.silu(conv(context))", "        return conv(context)",
           "the causal convolution of a forward pass skips its SiLU"),
    Mutant("rmsnorm_without_weight", "modeling/block.py",
           "return self.weight * F.rms_norm(", "return 1.0 * F.rms_norm(",
           "RMSNorm ignores its learned scale (invisible at initialisation, where the scale is 1)"),
    Mutant("s4d_euler_not_zero_order_hold", "modeling/s4d.py",
           "return dtA, torch.expm1(dtA) / A * torch.view_as_complex(self.B.float())",
           "return dtA, dtA / A * torch.view_as_complex(self.B.float())",
           "S4D's B̄ is Δ·B (Euler) instead of (exp(ΔA) - 1)/A · B (zero-order hold)"),
    Mutant("delta_window_not_averaged", "modeling/selectivity.py",
           "return self.bias.double() + window_sum / self.window,", "return self.bias.double() + window_sum,",
           "θ_Δ's window of W token scores is summed, not averaged"),
    Mutant("rate_excess_not_normalised", "modeling/rate_loss.py",
           "excess = (speed - rates) / (1.0 - rates)", "excess = speed - rates",
           "the rate term's excess is not divided by the free range 1 - κ"),
    Mutant("rate_budget_not_rescaled", "modeling/rate_loss.py",
           "(excess - budget).clamp(min=0.0) / (1.0 - budget)", "(excess - budget).clamp(min=0.0)",
           "the rate term beyond the budget is not rescaled to reach 1 when every element is kept"),
    Mutant("decoding_step_not_counted", "serpent_hf/cache.py",
           "        self.num_tokens += 1\n", "",
           "a decoding step does not count its token in the cache (generate() slices the prompt by that count)"),
    Mutant("mean_pooling_over_padding", "serpent_hf/modeling_serpent_classification.py",
           "/ weights.sum(dim=1).clamp(min=1.0)", "/ hidden_states.shape[1]",
           "mean pooling divides by the padded length, not by the row's real tokens"),
    Mutant("new_chunk_padding_after_real_tokens", "serpent_hf/modeling_serpent.py",
           "started = cache.started if cache is not None and attention_mask.shape[1] == length else None",
           "started = None",
           "a new chunk's mask starting with padding is accepted in a row whose cache holds real tokens"),
]


def copy_repository(destination):
    """The repository at `destination`, with modeling/, training/, model_cards/ inside serpent_hf/ (a wheel's layout)."""
    shutil.copytree(ROOT, destination, ignore=IGNORED)
    for folder, inside in PACKAGE_FOLDERS.items():
        shutil.copytree(destination / folder, destination / inside, ignore=IGNORED)


def copied_path(path):
    for folder, inside in PACKAGE_FOLDERS.items():
        if path.startswith(folder + "/"):
            return inside + path[len(folder):]
    return path


def environment(copy):
    return dict(os.environ, PYTHONPATH=str(copy), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")


def run_tests(copy, tests, timeout):
    """(first failing test or None, seconds)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow and not cuda",
               *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=copy, env=environment(copy), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "(timed out: counted as caught)", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        return None, seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.MULTILINE)
    if not failed:  # no test failed, yet pytest did not pass: collection or usage error, not a caught mutant
        sys.exit(f"pytest exited {done.returncode} without a failing test:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return failed[0], seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="mutant names to run (default: all)")
    parser.add_argument("--tests", nargs="*", default=TESTS, help="test files or ids to run against each mutant")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "mutation_check.txt"))
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"no such mutant: {sorted(unknown)}")

    with tempfile.TemporaryDirectory(prefix="serpent-mutants-") as folder:
        copy = Path(folder) / "repo"
        copy_repository(copy)
        where = subprocess.run([sys.executable, "-c", "import serpent_hf.modeling as m; print(m.__file__)"],
                               cwd=copy, env=environment(copy), capture_output=True, text=True, check=True)
        if not Path(where.stdout.strip()).resolve().is_relative_to(copy.resolve()):
            sys.exit(f"the tests would import {where.stdout.strip()}, not the copy in {copy}")
        originals = {}
        for mutant in mutants:  # every pattern is checked before any test runs
            target = copy / copied_path(mutant.path)
            text = originals.setdefault(target, target.read_text(encoding="utf-8"))
            count = text.count(mutant.old)
            if count != 1:
                sys.exit(f"mutant {mutant.name}: its text occurs {count} times in {mutant.path} (expected once); "
                         "the code changed: update the mutant")
            try:  # a mutant that does not compile would be "caught" by any test: it must be a real program
                compile(text.replace(mutant.old, mutant.new), str(target), "exec")
            except SyntaxError as error:
                sys.exit(f"mutant {mutant.name} does not compile ({error}): fix the mutant")
        failed, seconds = run_tests(copy, args.tests, args.timeout)
        if failed is not None:
            sys.exit(f"the unmutated copy fails {failed}: fix the suite first")
        rows = [("(none: unmutated copy)", "passes", f"{seconds:.0f} s", "")]
        print(f"unmutated copy passes ({seconds:.0f} s)", flush=True)
        for mutant in mutants:
            target = copy / copied_path(mutant.path)
            target.write_text(originals[target].replace(mutant.old, mutant.new), encoding="utf-8")
            try:
                failed, seconds = run_tests(copy, args.tests, args.timeout)
            finally:
                target.write_text(originals[target], encoding="utf-8")
            verdict = f"caught by {failed}" if failed else "MISSED"
            rows.append((mutant.name, verdict, f"{seconds:.0f} s", mutant.why))
            print(f"{mutant.name:32} {verdict} ({seconds:.0f} s)", flush=True)

    missed = [row[0] for row in rows[1:] if row[1] == "MISSED"]
    lines = [f"Mutation check (scripts/mutation_check.py): {len(rows) - 1} mutants, {len(missed)} missed",
             f"Tests: {' '.join(args.tests)} (-m 'not slow', stopping at the first failure)", ""]
    lines += [f"{name:32} {verdict:100} {took:>6}   {why}" for name, verdict, took, why in rows]
    report = "\n".join(lines) + "\n"
    if not args.only:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(report, encoding="utf-8")
    print("\n" + report)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
