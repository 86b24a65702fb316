"""Train a causal language model (SeRpEnt, or its Mamba baseline) with the Hugging Face Trainer.

The end of a run leaves in --output_dir: the model, the tokenizer, eval_results.json (eval_loss,
eval_perplexity, eval_top1_accuracy, eval_top5_accuracy), train_results.json, training_curves.png,
deltas.png (Δ per token and branch on a sample text) and README.md, the model card. With
--push_to_hub all of it goes to --hub_model_id in one commit.

    serpent-train --model_config tiny --train_file my.txt --output_dir runs/mine   # the defaults below
    serpent-train configs/train-tiny.yaml                    # a whole run in one file
    serpent-train --model_config configs/small.json --output_dir runs/small \
        --dataset_name wikitext --dataset_config_name wikitext-103-v1 --block_size 256 --max_steps 1000
    accelerate launch --multi_gpu --num_processes 2 -m serpent_hf.training.train_lm configs/train-tiny.yaml

Defaults (RECIPE; a run file or the command line overrides each): the recipe of the tiny and small runs
(AdamW at 3e-3, cosine schedule after 10% warmup, weight decay 0.1, 10 epochs), evaluation and a checkpoint
every tenth of the run, a log line every fiftieth, blocks of 128 tokens (halved while a split of a small text
holds less than one block), and for a new model a byte-level BPE trained on the training text with the
config's vocab_size entries (a checkpoint keeps its own tokenizer). A non-empty --output_dir is refused unless
the run resumes (--resume_from_checkpoint) or --overwrite_output_dir is given.

The last runs 2 CPU processes. (With accelerate 1.x, `accelerate launch --cpu --num_processes 2` starts a
single process; the run file's `use_cpu: true` plus `--multi_gpu` gives several CPU processes over gloo.)
"""

import logging
import os
import shutil
from pathlib import Path

from transformers import AutoTokenizer, TrainingArguments, default_data_collator, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..cli import run_command
from .arguments import DataArguments, ModelArguments, ReportArguments, parse_arguments
from .data import (
    BlockSizeTooLarge, group_into_blocks, load_raw_text, load_tokenizer, resolve_block_size, sample_text,
    train_bpe_tokenizer,
)
from .evaluation import IGNORE_KEYS, add_perplexity, build_compute_metrics, preprocess_logits_for_metrics
from .generation import generate_sample
from .hub import create_run_repo, push_run
from .model_card import write_model_card
from .models import build_model, is_new_model, missing_model_config, read_model_config, resolve_model_config
from .plots import delta_profile, plot_deltas, plot_training_curves
from .resume import checkpoint_to_resume
from .trainer import SeRpEntTrainer

logger = logging.getLogger("train_lm")

# serpent-train's own defaults: what configs/train-tiny.yaml and the quality study train with, in proportions of
# the run where TrainingArguments allow it, so one command on a user's text file of any size trains sensibly
# (TrainingArguments' own, 5e-5 without a schedule and a log line every 500 steps, leave `tiny` untrained).
RECIPE = {
    "learning_rate": 3e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,  # below 1: a fraction of the run's steps
    "weight_decay": 0.1,
    "num_train_epochs": 10,
    "eval_strategy": "steps",
    "eval_steps": 0.1,
    "save_steps": 0.1,
    "save_total_limit": 2,
    "logging_steps": 0.02,
    "report_to": "none",
}
# What a run that failed before training leaves in --output_dir (the BPE trained on the fly, saved for every process):
# a rerun may train over it, so that correcting a typo needs no --overwrite_output_dir.
FAILED_START_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
# Blocks of the default size, halved while a split holds less than one block (a small text file), down to this.
DEFAULT_BLOCK_SIZE, SMALLEST_DEFAULT_BLOCK_SIZE = 128, 16


def check_output_dir(training_args, overwrite):
    """Refuse to train into a folder that holds something, unless resuming or asked to: a second run would
    silently replace the first one's model, results and checkpoints. Asked to overwrite, remove the old run's
    checkpoint-* folders: within save_total_limit an old checkpoint-800 would stay beside the new run's own, and
    `--resume_from_checkpoint last` (the highest step) would pick it."""
    folder = Path(training_args.output_dir)
    if overwrite and training_args.resume_from_checkpoint is None and folder.is_dir():
        old = sorted(folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
        if old and training_args.process_index == 0:
            logger.warning("--overwrite_output_dir: removing the earlier run's %s", ", ".join(p.name for p in old))
            for checkpoint in old:
                shutil.rmtree(checkpoint, ignore_errors=True)
    if overwrite or training_args.resume_from_checkpoint is not None or not folder.is_dir():
        return
    held = sorted(path.name for path in folder.iterdir())
    if held and not set(held) <= FAILED_START_FILES:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(f"--output_dir {folder} is not empty (it holds {shown}): give a new folder, "
                         "--resume_from_checkpoint last to continue the run it holds, or --overwrite_output_dir "
                         "to train over it")


def choose_tokenizer(model_args):
    """Without --tokenizer_name or --train_tokenizer: a new model trains a BPE of its config's vocabulary size on
    the training text (offline, and the embedding keeps the config's size); a checkpoint keeps its own tokenizer,
    and a new BPE for a checkpoint is refused: its ids would mean nothing to the checkpoint's embeddings."""
    new_model = is_new_model(model_args.model_config)
    if new_model and not Path(resolve_model_config(model_args.model_config)).is_file():
        raise missing_model_config(model_args.model_config)  # before a BPE is trained for a model never built
    if model_args.train_tokenizer is not None and not new_model:
        raise ValueError(f"--train_tokenizer trains a new BPE, whose ids mean nothing to the checkpoint --model_config "
                         f"{model_args.model_config}: leave it out (the checkpoint's own tokenizer is used), or "
                         "--unset train_tokenizer when a run file sets it")
    if model_args.tokenizer_name is not None or model_args.train_tokenizer is not None:
        return
    if new_model:
        model_args.train_tokenizer = read_model_config(resolve_model_config(model_args.model_config)).vocab_size
        logger.info("tokenizer: a byte-level BPE of %d entries (the config's vocab_size) trained on the training "
                    "text (--tokenizer_name or --train_tokenizer choose another)", model_args.train_tokenizer)
    else:
        model_args.tokenizer_name = model_args.model_config


def blocks_of_default_size(raw, tokenizer, data_args):
    """(blocks, block size) with the default block size, halved while a split holds less than one block."""
    block_size = DEFAULT_BLOCK_SIZE
    while True:
        try:
            return group_into_blocks(raw, tokenizer, block_size, data_args.preprocessing_num_workers,
                                     data_args.overwrite_cache), block_size
        except BlockSizeTooLarge as error:
            if block_size // 2 < SMALLEST_DEFAULT_BLOCK_SIZE:
                raise
            logger.warning("%s; trying blocks of %d tokens (--block_size chooses)", error, block_size // 2)
            block_size //= 2


def get_tokenizer(model_args, raw, training_args):
    """The named tokenizer, or a byte-level BPE trained by the main process on the training text."""
    if model_args.train_tokenizer is None:
        return load_tokenizer(model_args.tokenizer_name, model_args.cache_dir)
    with training_args.main_process_first(local=False, desc="training the tokenizer"):
        if training_args.process_index == 0:
            texts = (batch["text"] for batch in raw["train"].iter(batch_size=1000))
            train_bpe_tokenizer(texts, model_args.train_tokenizer).save_pretrained(training_args.output_dir)
    return AutoTokenizer.from_pretrained(training_args.output_dir)  # every process uses the same saved files


def main(argv=None):
    model_args, data_args, report_args, training_args = parse_arguments(
        (ModelArguments, DataArguments, ReportArguments, TrainingArguments), argv, defaults=RECIPE)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    logging.getLogger("serpent_hf").setLevel(logging.INFO)
    check_output_dir(training_args, report_args.overwrite_output_dir)
    if resolve_model_config(model_args.model_config) != model_args.model_config:
        logger.info("--model_config %s: the preset shipped with serpent-hf (%s)", model_args.model_config,
                    resolve_model_config(model_args.model_config))
    choose_tokenizer(model_args)
    push, training_args.push_to_hub = training_args.push_to_hub, False  # one push at the end, with our card
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in os.environ \
            and training_args.world_size == 1:
        logger.warning("accelerate launch --cpu started ONE process although several were asked for; for several "
                       "CPU processes run `accelerate launch --multi_gpu --num_processes N ... --use_cpu true`")
    set_seed(training_args.seed)
    if training_args.include_num_input_tokens_seen in ("no", False):  # the model card states the tokens trained
        training_args.include_num_input_tokens_seen = "all"

    with training_args.main_process_first(desc="loading the text"):
        raw = load_raw_text(data_args, model_args.cache_dir)
    tokenizer = get_tokenizer(model_args, raw, training_args)
    with training_args.main_process_first(desc="tokenising"):
        if data_args.block_size is None:
            blocks, block_size = blocks_of_default_size(raw, tokenizer, data_args)
        else:
            block_size = resolve_block_size(data_args.block_size, tokenizer)
            blocks = group_into_blocks(raw, tokenizer, block_size, data_args.preprocessing_num_workers,
                                       data_args.overwrite_cache)
    train_set, eval_set = blocks["train"], blocks["validation"]
    if data_args.max_train_samples:
        train_set = train_set.select(range(min(data_args.max_train_samples, len(train_set))))
    if data_args.max_eval_samples:
        eval_set = eval_set.select(range(min(data_args.max_eval_samples, len(eval_set))))
    model = build_model(model_args.model_config, tokenizer, model_args.cache_dir)
    logger.info("%s with %s parameters; %d training and %d evaluation blocks of %d tokens",
                type(model).__name__, f"{model.num_parameters():,}", len(train_set), len(eval_set), block_size)

    trainer = SeRpEntTrainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        data_collator=default_data_collator, compute_metrics=build_compute_metrics(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        selectivity_lr_multiplier=model_args.selectivity_lr_multiplier,
        compressed_branch_lr_multiplier=model_args.compressed_branch_lr_multiplier,
    )
    resume = checkpoint_to_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume, ignore_keys_for_eval=IGNORE_KEYS)
    trainer.save_model()
    train_result.metrics["train_block_size"] = block_size  # serpent-eval evaluates at this size by default
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    metrics = add_perplexity(trainer.evaluate(ignore_keys=IGNORE_KEYS))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if not trainer.is_world_process_zero():
        return metrics

    output_dir = Path(training_args.output_dir)
    model = trainer.model
    plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png")
    plots = {"Training curves": "training_curves.png"}
    profile = delta_profile(model, tokenizer, report_args.delta_text or sample_text(raw))
    if profile is not None:
        plot_deltas(profile, output_dir / "deltas.png")
        plots["Selectivity Δ per token and branch"] = "deltas.png"
    sample = generate_sample(model, tokenizer, report_args.sample_prompt, report_args.sample_max_new_tokens,
                             seed=training_args.seed)
    (output_dir / "sample.txt").write_text(sample + "\n", encoding="utf-8")
    load_from = training_args.output_dir  # what the card's examples load: the folder, or the Hub id
    if push:
        load_from = create_run_repo(training_args.hub_model_id or output_dir.name, token=training_args.hub_token,
                                    private=training_args.hub_private_repo)
    tokenizer_description = ("byte-level BPE trained on the training text" if model_args.train_tokenizer
                             else f"`{model_args.tokenizer_name}`")
    write_model_card(
        output_dir, model=model, tokenizer_description=tokenizer_description, tokenizer_size=len(tokenizer),
        data_args=data_args, training_args=training_args, metrics=metrics, block_size=block_size,
        train_blocks=len(train_set), eval_blocks=len(eval_set), steps=trainer.state.global_step, load_from=load_from,
        tokens_trained=trainer.state.num_input_tokens_seen,
        sample=sample, sample_prompt=report_args.sample_prompt, sample_max_new_tokens=report_args.sample_max_new_tokens,
        plots=plots, profile=profile, template_path=report_args.model_card_template,
    )
    print(f"\nSample ({report_args.sample_prompt!r}, seed {training_args.seed}):\n{sample}\n")
    if push:
        push_run(output_dir, load_from, token=training_args.hub_token, revision=training_args.hub_revision)
        logger.info("pushed %s to the Hub as %s", output_dir, load_from)
    return metrics


def command():
    """`serpent-train`: exits with status 0 after a run, or with one line naming the error (serpent_hf.cli)."""
    run_command(main)


if __name__ == "__main__":
    command()
