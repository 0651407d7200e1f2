"""Silero VAD's own reference: per-window speech probabilities from the
package's ONNX model, stepped exactly as silero-vad's OnnxWrapper steps it
(512-sample windows at 16 kHz, the last 64 samples of the previous window
prepended as context, the LSTM state carried). Reads little-endian f32
samples from stdin, writes one probability per line.

Usage: python3 silero_onnx.py MODEL.onnx < samples.f32
"""
import sys

import numpy as np
import onnxruntime


def main():
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    sess = onnxruntime.InferenceSession(
        sys.argv[1], providers=["CPUExecutionProvider"], sess_options=opts
    )
    x = np.frombuffer(sys.stdin.buffer.read(), dtype="<f4").astype(np.float32)
    window, context = 512, 64
    pad = (-len(x)) % window
    x = np.concatenate([x, np.zeros(pad, dtype=np.float32)])
    state = np.zeros((2, 1, 128), dtype=np.float32)
    ctx = np.zeros((1, context), dtype=np.float32)
    out = []
    for i in range(0, len(x), window):
        chunk = x[i : i + window].reshape(1, window)
        inp = np.concatenate([ctx, chunk], axis=1)
        p, state = sess.run(
            None, {"input": inp, "state": state, "sr": np.array(16000, dtype=np.int64)}
        )
        ctx = inp[:, -context:]
        out.append(float(p.reshape(-1)[0]))
    sys.stdout.write("".join(f"{p:.6f}\n" for p in out))


if __name__ == "__main__":
    main()
