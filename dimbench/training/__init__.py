"""Diffusion training for dimbench's quality checks and for real runs: the loop (:mod:`.trainer`), several
processes under torchrun (:mod:`.distributed`), and the ``train`` suite metric built on them."""

from dimbench.training.trainer import (
    PRECISIONS,
    Diverged,
    TrainConfig,
    Trainer,
    TrainResult,
    enable_activation_checkpointing,
    load_training_state,
    save_atomic,
)

__all__ = ["PRECISIONS", "Diverged", "TrainConfig", "TrainResult", "Trainer", "enable_activation_checkpointing",
           "load_training_state", "save_atomic"]
