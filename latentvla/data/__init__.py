"""RLDS data without TensorFlow.

tfrecord (CRC32C framing) -> example (tf.train.Example codec) -> features / tfds (builder dirs,
reader + writer) -> registry (which keys, which platform) -> index + statistics (one cached pass)
-> dataset (VLADataset, ActionChunkDataset, FramePairDataset) + transforms + sampler
(GlobalSampler). `synthetic` writes small datasets in the real layout; `commands` holds the
`latentvla data stats|inspect` commands. Nothing here imports `latentvla.vla`.
"""
