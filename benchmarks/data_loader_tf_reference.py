"""Reference: an OpenVLA-style tf.data RLDS pipeline on the same dataset (our loader targets 3x its rate).

Needs TensorFlow + tensorflow-datasets, which latentvla never installs: run it from a scratch venv,
on the dataset `benchmarks/data_loader.py --out_dir DIR` wrote:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tensorflow-datasets numpy
    /tmp/tfvenv/bin/python benchmarks/data_loader_tf_reference.py --data_dir DIR

Pipeline (what the paper's reference code does, reduced to its work): episodes from
`tfds.builder_from_directory`, action chunks of 8 by gather, flatten to frames, a 1000-frame
shuffle buffer, JPEG decode + Lanczos-3 antialiased resize to 224 for both cameras, random crop of
area 0.9 + brightness / contrast / saturation / hue, batch 32; inter/intra-op threads = --threads.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", required=True, help="the --out_dir given to benchmarks/data_loader.py")
    ap.add_argument("--name", default="libero_goal_no_noops")
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image_size", type=int, default=224)
    args = ap.parse_args()

    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    S, P = args.image_size, 8
    builder = tfds.builder_from_directory(os.path.join(args.data_dir, args.name, "1.0.0"))
    ds = builder.as_dataset(split="train", shuffle_files=True, decoders={"steps": tfds.decode.SkipDecoding()})

    def traj(ep):
        steps = ep["steps"]
        act = steps["action"]
        T = tf.shape(act)[0]
        idx = tf.minimum(tf.range(T)[:, None] + tf.range(P)[None, :], T - 1)
        return {"image": steps["observation"]["image"], "wrist_image": steps["observation"]["wrist_image"],
                "proprio": steps["observation"]["state"], "actions": tf.gather(act, idx),
                "instruction": steps["language_instruction"]}

    def frame(f):
        out = dict(f)
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        for k in ("image", "wrist_image"):
            img = tf.io.decode_jpeg(f[k], channels=3)
            img = tf.image.resize(img, (S, S), method="lanczos3", antialias=True)
            img = tf.image.stateless_random_crop(img, (int(S * 0.9487), int(S * 0.9487), 3), seed)
            img = tf.image.resize(img, (S, S)) / 255.0
            img = tf.image.stateless_random_brightness(img, 0.2, seed)
            img = tf.image.stateless_random_contrast(img, 0.8, 1.2, seed)
            img = tf.image.stateless_random_saturation(img, 0.8, 1.2, seed)
            img = tf.image.stateless_random_hue(img, 0.05, seed)
            out[k] = tf.cast(tf.clip_by_value(img, 0, 1) * 255, tf.uint8)
        return out

    ds = (ds.repeat().map(traj, num_parallel_calls=tf.data.AUTOTUNE).flat_map(tf.data.Dataset.from_tensor_slices)
          .shuffle(1000).map(frame, num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch_size)
          .prefetch(tf.data.AUTOTUNE))
    it = iter(ds)
    for _ in range(3):
        next(it)
    n = args.samples // args.batch_size
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        next(it)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    load = os.getloadavg()[0]
    print(f"tf.data reference ({args.threads} threads, load average {load:.1f}): "
          f"{n * args.batch_size / dt:.0f} wall samples/s, {n * args.batch_size / cpu:.0f} samples/CPU-s")


if __name__ == "__main__":
    main()
