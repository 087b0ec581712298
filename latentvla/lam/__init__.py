"""Latent action models (import-light: nothing heavy is imported here).

- Action-based: `action_tokenizer` (VQ action-chunk tokenizer, `ActionChunkTokenizer`),
  `action_tokenizer_checkpoint` (tokenizer_step_N.pt I/O), `action_tokenizer_train`
  (`latentvla lam action-train`), `configuration_action_tokenizer` (configs).
- Image-based: the UniVLA-style image LAM, its trainer (`latentvla lam image-train`) and dataset
  annotation (`latentvla lam annotate`); see those modules.
"""
