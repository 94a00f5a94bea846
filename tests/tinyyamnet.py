"""Build a tiny SavedModel with YAMNet's signature: a 1-D float32 waveform at 16 kHz in; scores (patches, 521),
embeddings (patches, 1024) and a log-mel spectrogram out, one patch of 0.96 s every 0.48 s.

Run by path with the TensorFlow environment's python (never imported by the tests: TensorFlow and torch in one
process crash): `.venv-tf/bin/python tests/tinyyamnet.py OUT_FOLDER`. The embeddings are a fixed random
projection of each patch's log spectrum, so they depend on the sound (a low and a high tone differ).
"""

from __future__ import annotations

import sys


def build(folder: str) -> None:
    import tensorflow as tf

    class TinyYamnet(tf.Module):
        def __init__(self):
            super().__init__()
            self.project = tf.Variable(tf.random.stateless_normal((64, 1024), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.float32)])
        def __call__(self, waveform):
            patches = tf.signal.frame(waveform, 15360, 7680, pad_end=True)  # 0.96 s every 0.48 s
            spectrum = tf.abs(tf.signal.rfft(patches[:, :126]))  # 64 bins
            embeddings = tf.matmul(tf.math.log(spectrum + 1e-3), self.project)
            count = tf.shape(patches)[0]
            return tf.zeros([count, 521]), embeddings, tf.zeros([count * 2, 64])

    tf.saved_model.save(TinyYamnet(), folder)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tinyyamnet.py OUT_FOLDER")
    build(sys.argv[1])
