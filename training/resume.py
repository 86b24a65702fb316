"""Which checkpoint a run resumes from: serpent-train and serpent-train-lra share `--resume_from_checkpoint`."""

import logging
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)


def checkpoint_to_resume(resume, output_dir):
    """--resume_from_checkpoint PATH, or "last"/"true" (the newest checkpoint-* in output_dir) -> the checkpoint
    folder, or None. The Trainer starts a fresh optimizer without a word when the checkpoint holds no optimizer
    state (a checkpoint saved with save_only_model, or copied without it): the run then differs from an
    uninterrupted one, so say so."""
    if resume is None:
        return None
    if resume.lower() in ("true", "last"):
        checkpoint = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint {resume}: no checkpoint-* folder in --output_dir {output_dir}")
    elif not Path(resume).is_dir():
        raise ValueError(f"--resume_from_checkpoint {resume} is not a checkpoint folder")
    else:
        checkpoint = resume
    if not any("optim" in path.name for path in Path(checkpoint).rglob("*")):
        logger.warning("%s holds no optimizer state: training resumes with a fresh optimizer (moments at zero), so it "
                       "will not match an uninterrupted run", checkpoint)
    return checkpoint
