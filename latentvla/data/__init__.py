"""RLDS and LeRobot data without TensorFlow or the lerobot package.

tfrecord (CRC32C framing) -> example (tf.train.Example codec) -> features / tfds (builder dirs,
reader + writer) -> registry (which keys, which platform) -> index + statistics (one cached pass)
-> dataset (VLADataset, ActionChunkDataset, FramePairDataset) + transforms + sampler
(GlobalSampler). `synthetic` writes small datasets in the real layout; `commands` holds the
`latentvla data stats|inspect` commands. LeRobot (v3.0 / v2.1): lerobot (parquet + metadata) + video
(mp4 frames by timestamp) -> lerobot_index; `store` puts both formats behind one interface for the
datasets and statistics; lerobot_writer + lerobot_columns write LeRobot data (`staging`: what the
writers share). Nothing here imports `latentvla.vla`.
"""
