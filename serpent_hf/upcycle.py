"""Upcycling: turn a transformers `MambaForCausalLM` checkpoint into a SeRpEnt checkpoint.

Every layer's rate-1.0 branch takes the Mamba mixer's weights; embeddings, norms and the LM
head are copied. The other branches start from the same mixer weights (a warm start for their
SSM), and their share of the concat projection is zero while the rate-1.0 share is the
identity, so the upcycled model computes exactly what the Mamba model did until training moves
the projection. The vocabulary is the Mamba's, so its tokenizer files are copied too.

    serpent-upcycle --mamba state-spaces/mamba-130m-hf --output_dir serpent-130m
"""

import argparse
import shutil
from pathlib import Path

import torch
from huggingface_hub import snapshot_download

from .cli import run_command
from .configuration_serpent import SeRpEntConfig
from .modeling_serpent import SeRpEntForCausalLM

# MambaConfig fields that carry over to SeRpEntConfig unchanged.
SHARED_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel", "use_bias",
    "use_conv_bias", "hidden_act", "layer_norm_epsilon", "residual_in_fp32", "time_step_rank", "time_step_scale",
    "time_step_min", "time_step_max", "time_step_init_scheme", "time_step_floor", "rescale_prenorm_residual",
    "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id", "initializer_range",
)


# The files transformers' tokenizers are saved as: the fast tokenizer's, and the slow ones' vocabularies.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model")


def _load_mamba(mamba):
    if isinstance(mamba, str):
        from transformers import MambaForCausalLM

        return MambaForCausalLM.from_pretrained(mamba)
    return mamba


def upcycle_mamba(mamba, compression_rates=(1.0, 0.5, 0.25), **config_overrides):
    """mamba: a MambaForCausalLM, or a directory / Hub name of one. Returns a SeRpEntForCausalLM."""
    mamba = _load_mamba(mamba)
    rates = [float(rate) for rate in compression_rates]
    if 1.0 not in rates:
        raise ValueError(f"upcycling needs a rate-1.0 branch to hold the Mamba mixer, got compression_rates={rates}")
    fields = {name: getattr(mamba.config, name) for name in SHARED_FIELDS}
    config = SeRpEntConfig(**fields, compression_rates=rates, **config_overrides)
    model = SeRpEntForCausalLM(config)
    identity_branch = rates.index(1.0)
    source = mamba.state_dict()

    state = {"model.embeddings.weight": source["backbone.embeddings.weight"],
             "model.norm_f.weight": source["backbone.norm_f.weight"],
             "lm_head.weight": source.get("lm_head.weight", source["backbone.embeddings.weight"])}
    hidden = config.hidden_size
    for layer in range(config.num_hidden_layers):
        prefix = f"backbone.layers.{layer}."
        state[f"model.layers.{layer}.norm.weight"] = source[prefix + "norm.weight"]
        mixer = {key[len(prefix + "mixer."):]: value for key, value in source.items() if key.startswith(prefix + "mixer.")}
        for branch in range(len(rates)):
            for name, value in mixer.items():
                state[f"model.layers.{layer}.branches.{branch}.mixer.{name}"] = value
        if len(rates) > 1:
            projection = torch.zeros(hidden, hidden * len(rates))
            projection[:, identity_branch * hidden : (identity_branch + 1) * hidden] = torch.eye(hidden)
            state[f"model.layers.{layer}.projection.weight"] = projection
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"upcycling produced weights the SeRpEnt model does not have: {unexpected}")
    # The resampling weights (θ_Δ, wherever delta_source puts it, and the bases) are new: they keep their init.
    not_copied = [key for key in missing if ".resampler." not in key and not key.startswith("model.selectivity.")]
    if not_copied:
        raise ValueError(f"the Mamba checkpoint lacks weights SeRpEnt needs: {not_copied}")
    return model


def copy_tokenizer(source, output_dir):
    """Copy the tokenizer files of `source` (a checkpoint folder or Hub name) into output_dir; returns
    the names copied (none when the source has no tokenizer)."""
    is_folder = Path(source).is_dir()
    folder = Path(source if is_folder else snapshot_download(source, allow_patterns=list(TOKENIZER_FILES)))
    copied = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    for name in copied:
        shutil.copyfile(folder / name, Path(output_dir) / name)
    return copied


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mamba", required=True, help="a MambaForCausalLM checkpoint: a local folder (offline) or a "
                        "Hub name")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--compression_rates", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    args = parser.parse_args(argv)
    model = upcycle_mamba(args.mamba, args.compression_rates)
    model.save_pretrained(args.output_dir)
    copied = copy_tokenizer(args.mamba, args.output_dir)
    tokenizer = f"its tokenizer ({', '.join(copied)})" if copied else f"no tokenizer ({args.mamba} has none)"
    print(f"wrote a SeRpEnt checkpoint with rates {args.compression_rates} and {tokenizer} to {args.output_dir}")


def command():
    """`serpent-upcycle`: one line naming an error, the traceback with --debug (serpent_hf.cli)."""
    run_command(main)


if __name__ == "__main__":
    command()
