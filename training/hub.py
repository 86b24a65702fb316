"""Push the finished run (model, tokenizer, card, results, plots) to the Hugging Face Hub in one commit.

The Trainer's own push would replace our model card with its generic one, so train_lm.py turns it
off and calls `push_run` once at the end. Checkpoints stay local.
"""

from pathlib import Path

from huggingface_hub import HfApi

LOCAL_ONLY = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.tmp"]


def push_run(output_dir, repo_id, token=None, private=None, revision=None, commit_message="Upload SeRpEnt run"):
    """create_repo (if needed) + upload_folder; returns the repo id the Hub assigned."""
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo.repo_id, folder_path=str(Path(output_dir)), ignore_patterns=list(LOCAL_ONLY),
                      commit_message=commit_message, revision=revision)
    return repo.repo_id
