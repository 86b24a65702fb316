"""The model card of a run: README.md in the output directory, rendered from a Jinja template in
`model_cards/` (installed as `serpent_hf.model_cards`) with huggingface_hub's `ModelCard.from_template`.

It states the architecture, parameter count, data, tokens trained, hyperparameters, metrics
(also as model-index metadata), the plots, a generated sample and how to load the model.
"""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..model_cards import SERPENT_LM
from .models import describe_architecture

METRICS = {  # key in eval_results.json -> (metric id, pretty name)
    "eval_top1_accuracy": ("accuracy", "Top-1 accuracy"),
    "eval_top5_accuracy": ("accuracy", "Top-5 accuracy"),
    "eval_perplexity": ("perplexity", "Perplexity"),
    "eval_loss": ("loss", "Cross-entropy (nats/token)"),
}


def describe_data(data_args):
    """(human description, Hub dataset id or None, options that select the same evaluation data)."""
    if data_args.train_file or data_args.validation_file:
        parts = [f"local text `{data_args.train_file}`" if data_args.train_file else None,
                 f"validation `{data_args.validation_file}`" if data_args.validation_file else None]
        description, dataset_id = ", ".join(p for p in parts if p), None
        options = " ".join(f"--{key} {value}" for key, value in (("train_file", data_args.train_file),
                                                                  ("validation_file", data_args.validation_file)) if value)
    else:
        dataset_id = data_args.dataset_name
        description = f"[{dataset_id}](https://huggingface.co/datasets/{dataset_id}) ({data_args.dataset_config_name})"
        options = f"--dataset_name {dataset_id} --dataset_config_name {data_args.dataset_config_name}"
    if data_args.validation_articles:
        description += f"; the last {data_args.validation_articles} articles held out for evaluation"
        options += f" --validation_articles {data_args.validation_articles}"
    elif not data_args.validation_file:  # a dataset without a validation split is cut the same way
        if data_args.train_file:
            description += f"; the last {data_args.validation_split_percentage}% of lines held out for evaluation"
        options += f" --validation_split_percentage {data_args.validation_split_percentage}"
    if data_args.max_eval_samples:
        description += f"; evaluation on its first {data_args.max_eval_samples} blocks"
        options += f" --max_eval_samples {data_args.max_eval_samples}"
    return description, dataset_id, options


def write_model_card(output_dir, *, model, tokenizer_description, tokenizer_size, data_args, training_args, metrics,
                     block_size, train_blocks, eval_blocks, steps, load_from, sample=None, sample_prompt="",
                     sample_max_new_tokens=0, plots=None, profile=None, template_path=None, tokens_trained=None):
    """Render the card, save it as output_dir/README.md and return it. `load_from`: what the card's
    examples pass to `from_pretrained`, the Hub id the run is pushed to or its output folder. `tokens_trained`: the
    Trainer's count (a short last batch per epoch holds fewer blocks); None: steps × global batch × block size."""
    architecture = describe_architecture(model)
    data_description, dataset_id, data_options = describe_data(data_args)
    global_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * max(
        1, training_args.world_size)
    eval_results = [
        EvalResult(task_type="text-generation", task_name="Causal language modelling",
                   dataset_type=dataset_id or "text", dataset_name=dataset_id or data_description,
                   dataset_config=data_args.dataset_config_name if dataset_id else None, dataset_split="validation",
                   metric_type=metric_id, metric_name=pretty, metric_value=round(float(metrics[key]), 6))
        for key, (metric_id, pretty) in METRICS.items() if key in metrics
    ]
    card_data = ModelCardData(
        model_name=Path(load_from).name, library_name="transformers", license="apache-2.0",
        pipeline_tag="text-generation", datasets=[dataset_id] if dataset_id else None,
        tags=["serpent", "state-space-model", "mamba", "selective-resampling"], eval_results=eval_results,
    )
    compression = None
    if profile is not None:
        compression = {f"{rate:g}": float(profile["compressed_fraction"][:, index].mean())
                       for index, rate in profile["compressed_branches"].items()}
    rates = getattr(model.config, "compression_rates", None)
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or SERPENT_LM),
        load_from=load_from,
        model_name=Path(load_from).name,
        is_serpent=model.config.model_type == "serpent",
        single_branch=rates is not None and len(rates) == 1,
        architecture=architecture,
        data_description=data_description,
        eval_data_options=f"{data_options} --block_size {block_size}",
        tokenizer_description=tokenizer_description,
        tokenizer_size=tokenizer_size,
        block_size=block_size,
        train_blocks=train_blocks,
        eval_blocks=eval_blocks,
        steps=steps,
        global_batch_size=global_batch,
        tokens_trained=tokens_trained or steps * global_batch * block_size,
        hyperparameters={
            "learning_rate": training_args.learning_rate,
            "lr_scheduler": str(training_args.lr_scheduler_type.value if hasattr(training_args.lr_scheduler_type, "value")
                                else training_args.lr_scheduler_type),
            "warmup": training_args.warmup_steps,
            "weight_decay": training_args.weight_decay,
            "steps": steps,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
            "processes": max(1, training_args.world_size),
            "seed": training_args.seed,
        },
        metrics={pretty: f"{float(metrics[key]):.4f}" for key, (_, pretty) in METRICS.items() if key in metrics},
        plots=plots or {},
        compression=compression,
        sample=sample,
        sample_prompt=sample_prompt,
        sample_max_new_tokens=sample_max_new_tokens,
        seed=training_args.seed,
    )
    card.save(Path(output_dir) / "README.md")
    return card
