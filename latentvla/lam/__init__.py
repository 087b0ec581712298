"""Latent action models (import-light: nothing heavy is imported here).

- Action-based: `action_tokenizer` (VQ action-chunk tokenizer, `ActionChunkTokenizer`),
  `action_tokenizer_checkpoint` (tokenizer_step_N.pt I/O), `action_tokenizer_train` (data, objective
  and metrics of `latentvla lam action-train`), `configuration_action_tokenizer` (configs).
- Image-based: the UniVLA-style image LAM, its objective (`image_lam_train`) and dataset annotation
  (`latentvla lam annotate`). Both trainings run on the VLA's loop: `latentvla.train.lam_run`.
"""
