"""Push the finished run (model, tokenizer, card, results, plots) to the Hugging Face Hub in one commit.

The Trainer's own push would replace our model card with its generic one, so train_lm.py turns it
off, creates the repository before writing the card (which names its full id) and calls `push_run`
once at the end. Checkpoints stay local.
"""

from pathlib import Path

from huggingface_hub import HfApi

LOCAL_ONLY = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.tmp"]


def create_run_repo(repo_id, token=None, private=None):
    """Create the run's repository if needed; returns its full id (with the namespace the Hub assigned)."""
    return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id


def push_run(output_dir, repo_id, token=None, revision=None, commit_message="Upload SeRpEnt run"):
    """Upload the run folder to the existing repository `repo_id` in one commit."""
    HfApi(token=token).upload_folder(repo_id=repo_id, folder_path=str(Path(output_dir)),
                                     ignore_patterns=list(LOCAL_ONLY), commit_message=commit_message, revision=revision)
