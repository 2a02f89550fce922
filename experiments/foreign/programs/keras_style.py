"""A numpy-only MLP on the digits, logged the way a Keras ``model.fit`` callback does.

No framework at all: forward, backward and Adam written out in numpy, the plain ``mlflow``
API, and Keras' per-epoch names: ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
``lr`` (logged once per epoch, step = epoch, as ``mlflow.keras.autolog`` does).  Params as
``model.compile``/``fit`` name them (``learning_rate``, ``epochs``, ``batch_size``,
``dtype``, ``optimizer_name``).  Written without looking at the doctor.

``--dtype float16`` computes the forward pass in half precision (as a memory saving), with a
softmax written the textbook way (``exp(z) / sum(exp(z))``, no max subtracted).
"""

import _setup
import mlflow
import numpy as np
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--learning_rate": 2e-3,
        "--epochs": 40,
        "--batch_size": 64,
        "--units": 64,
        "--dtype": "float32",
        "--validation_split": 0.1,
        "--train_rows": 0,
        "--input_scale": 1 / 16,
        "--seed": 0,
    }
)

rng = _setup.seeded(args.seed, torch=False)
X, y = load_digits(return_X_y=True)
X = X * args.input_scale
idx = rng.permutation(len(X))
n_val = int(len(X) * args.validation_split)
va, tr = idx[:n_val], idx[n_val:]
if args.train_rows:
    tr = tr[: args.train_rows]
dt = np.dtype(args.dtype)
Y = np.eye(10)[y]


def glorot(a, b):
    return rng.uniform(-1, 1, (a, b)) * np.sqrt(6 / (a + b))


W = [glorot(64, args.units), glorot(args.units, args.units), glorot(args.units, 10)]
B = [np.zeros(args.units), np.zeros(args.units), np.zeros(10)]
params = W + B
m = [np.zeros_like(q) for q in params]
v = [np.zeros_like(q) for q in params]
t = 0


def forward(x):
    hs = [x.astype(dt)]
    for i in range(3):
        z = hs[-1] @ W[i].astype(dt) + B[i].astype(dt)
        hs.append(np.maximum(z, 0) if i < 2 else z)
    e = np.exp(hs[-1])  # textbook softmax
    return hs, e / e.sum(1, keepdims=True)


def loss_of(prob, yy):
    return float(
        -np.mean(np.log(np.clip(prob[np.arange(len(yy)), yy].astype(np.float64), 1e-12, None)))
    )


with mlflow.start_run():
    mlflow.log_params(
        {
            "learning_rate": args.learning_rate,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "units": args.units,
            "dtype": args.dtype,
            "validation_split": args.validation_split,
            "optimizer_name": "adam",
            "seed": args.seed,
            "train_rows": len(tr),
        }
    )
    with np.errstate(all="ignore"):
        for epoch in range(args.epochs):
            order = rng.permutation(tr)
            losses, accs = [], []
            for s in range(0, len(order), args.batch_size):
                bi = order[s : s + args.batch_size]
                hs, prob = forward(X[bi])
                losses.append(loss_of(prob, y[bi]))
                accs.append(float((prob.argmax(1) == y[bi]).mean()))
                g = (prob.astype(np.float64) - Y[bi]) / len(bi)
                grads_w, grads_b = [None] * 3, [None] * 3
                for i in (2, 1, 0):
                    h = hs[i].astype(np.float64)
                    grads_w[i], grads_b[i] = h.T @ g, g.sum(0)
                    if i:
                        g = (g @ W[i].T) * (hs[i] > 0)
                t += 1
                for j, (q, gq) in enumerate(zip(params, grads_w + grads_b, strict=True)):
                    m[j] = 0.9 * m[j] + 0.1 * gq
                    v[j] = 0.999 * v[j] + 0.001 * gq * gq
                    q -= (
                        args.learning_rate
                        * (m[j] / (1 - 0.9**t))
                        / (np.sqrt(v[j] / (1 - 0.999**t)) + 1e-7)
                    )
            _, pv = forward(X[va])
            mlflow.log_metrics(
                {
                    "loss": float(np.mean(losses)),
                    "accuracy": float(np.mean(accs)),
                    "val_loss": loss_of(pv, y[va]),
                    "val_accuracy": float((pv.argmax(1) == y[va]).mean()),
                    "lr": args.learning_rate,
                },
                step=epoch,
            )
    print(f"done: {args.epochs} epochs")
