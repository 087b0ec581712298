"""Training: `latentvla train` / `exp/train_vla.py`.

configuration_train (options, light) -> preflight (input checks before heavy work) -> run (wires
LatentVLA + VLADataset) -> trainer (generic loop: accumulation, clipping, checkpoints, resume) with
distributed (DDP / FSDP2), data_stream (resumable micro-batches), checkpointing, schedulers,
loggers, holdout (validation episodes). lam_run: `latentvla lam action-train` / `lam image-train`
on the same trainer.
"""
