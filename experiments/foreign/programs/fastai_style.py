"""A tabular digits classifier trained the way fastai's ``Learner.fit_one_cycle`` does, logged
the way ``mlflow.fastai.autolog()`` logs a fastai ``Recorder``.

Plain PyTorch + the plain ``mlflow`` API.  Names as MLflow's fastai callback writes them, once
per epoch with ``step=epoch``: the Recorder's columns ``epoch``, ``train_loss`` (the Recorder's
*smoothed* training loss, an exponential average with beta 0.98, debiased), ``valid_loss``
(mean over the validation set) and the metrics ``accuracy`` and ``error_rate``.  Params as that
callback logs them: ``opt_func``; for every scheduled hyper-parameter its ``_min``, ``_max``,
``_init`` and ``_final`` (``lr_*``, ``mom_*``); the optimiser's other hypers as per-group lists
(``wd``, ``sqr_mom``, ``eps``); ``true_wd``, ``bn_wd``, ``train_bn``; plus the script's own
settings.  Written without looking at the doctor.

The model is fastai's ``TabularModel`` shape (``LinBnDrop`` blocks: linear, ReLU, batch norm,
dropout); the optimiser is fastai's ``Adam`` (decoupled weight decay, ``sqr_mom`` 0.99,
``eps`` 1e-5).  ``--sched`` picks ``fit_one_cycle`` (default), ``fit_flat_cos`` or a plain
``fit`` at a constant rate.  ``--train_rows N`` keeps only N training rows; ``--layers`` sets
the widths.
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

args = _setup.parse_flags(
    {
        "--dataset": "digits",
        "--n_epoch": 20,
        "--lr_max": 3e-3,
        "--sched": "one_cycle",
        "--pct_start": 0.25,
        "--div": 25.0,
        "--div_final": 1e5,
        "--wd": 0.01,
        "--bs": 64,
        "--valid_pct": 0.1,
        "--train_rows": 0,
        "--layers": "200,100",
        "--ps": 0.0,
        "--seed": 0,
    }
)

rng = _setup.seeded(args.seed)
loader = {"digits": load_digits, "wine": load_wine, "breast_cancer": load_breast_cancer}
X, y = loader[args.dataset](return_X_y=True)
X = X.astype(np.float32)
idx = rng.permutation(len(X))
n_valid = int(round(args.valid_pct * len(X)))
va, tr = idx[:n_valid], idx[n_valid:]
if args.train_rows:
    tr = tr[: args.train_rows]
# fastai's Normalize, statistics of the training rows only: one mean/std over all pixels for
# the digit images, one per column for the tabular sets
axis = None if args.dataset == "digits" else 0
mu, sd = X[tr].mean(axis), X[tr].std(axis) + 1e-7
X = (X - mu) / sd
Xtr, ytr = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
Xva, yva = torch.from_numpy(X[va]), torch.from_numpy(y[va])
n_cls = int(y.max()) + 1

sizes = [X.shape[1], *(int(s) for s in args.layers.split(","))]
blocks = [torch.nn.BatchNorm1d(X.shape[1])]  # bn_cont
for i in range(len(sizes) - 1):
    blocks += [
        torch.nn.Linear(sizes[i], sizes[i + 1], bias=False),
        torch.nn.ReLU(),
        torch.nn.BatchNorm1d(sizes[i + 1]),
    ]
    if args.ps > 0:
        blocks.append(torch.nn.Dropout(args.ps))
blocks.append(torch.nn.Linear(sizes[-1], n_cls))
model = torch.nn.Sequential(*blocks)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr_max, betas=(0.9, 0.99), eps=1e-5)
for g in opt.param_groups:
    g["weight_decay"] = args.wd


def sched_cos(start, end, pos):
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def combined_cos(pct, a, b, c, pos):
    """fastai's ``combined_cos``: cosine from a to b over ``pct`` of training, then b to c."""
    if pos < pct:
        return sched_cos(a, b, pos / pct)
    return sched_cos(b, c, (pos - pct) / (1 - pct))


def hypers(pos):
    """(lr, mom) at training fraction ``pos`` for the chosen ``fit_*`` method."""
    if args.sched == "one_cycle":
        lr = combined_cos(
            args.pct_start, args.lr_max / args.div, args.lr_max, args.lr_max / args.div_final, pos
        )
        return lr, combined_cos(args.pct_start, 0.95, 0.85, 0.95, pos)
    if args.sched == "flat_cos":  # fit_flat_cos: flat for pct_start (0.75 there), then cosine
        pct = 0.75
        lr = args.lr_max if pos < pct else sched_cos(args.lr_max, 0.0, (pos - pct) / (1 - pct))
        return lr, 0.9
    return args.lr_max, 0.9  # fit


n_batches = len(Xtr) // args.bs or 1  # fastai's train DataLoader drops the last partial batch
total = args.n_epoch * n_batches
scheduled = [hypers(i / 100) for i in range(100)]  # what the callback samples to log a schedule
lrs, moms = np.array([h[0] for h in scheduled]), np.array([h[1] for h in scheduled])

with mlflow.start_run():
    params = {"opt_func": "Adam"}
    if args.sched != "fit":
        for name, vals in (("lr", lrs), ("mom", moms)):
            params |= {
                f"{name}_min": vals.min(),
                f"{name}_max": vals.max(),
                f"{name}_init": vals[0],
                f"{name}_final": vals[-1],
            }
    else:
        params |= {"lr": [args.lr_max], "mom": [0.9]}
    params |= {"wd": [args.wd], "sqr_mom": [0.99], "eps": [1e-05]}
    params |= {"true_wd": True, "bn_wd": True, "train_bn": True}
    params |= {
        "n_epoch": args.n_epoch,
        "bs": args.bs,
        "valid_pct": args.valid_pct,
        "layers": args.layers,
        "ps": args.ps,
        "dataset": args.dataset,
        "train_rows": len(Xtr),
        "seed": args.seed,
    }
    mlflow.log_params(params)
    print("epoch     train_loss  valid_loss  accuracy  error_rate  time")
    smooth, count, it = 0.0, 0, 0
    for epoch in range(args.n_epoch):
        t0 = time.time()
        model.train()
        order = torch.from_numpy(rng.permutation(len(Xtr)))
        for b in range(n_batches):
            bi = order[b * args.bs : (b + 1) * args.bs]
            lr, mom = hypers(it / total)
            for g in opt.param_groups:
                g["lr"], g["betas"] = lr, (mom, 0.99)
            loss = torch.nn.functional.cross_entropy(model(Xtr[bi]), ytr[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            count += 1  # Recorder's AvgSmoothLoss: debiased exponential average, beta 0.98
            smooth = 0.98 * smooth + 0.02 * loss.item()
        train_loss = smooth / (1 - 0.98**count)
        model.eval()
        with torch.no_grad():
            out = model(Xva)
            valid_loss = torch.nn.functional.cross_entropy(out, yva).item()
            acc = (out.argmax(1) == yva).float().mean().item()
        mlflow.log_metrics(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "accuracy": acc,
                "error_rate": 1 - acc,
            },
            step=epoch,
        )
        el = int(time.time() - t0)
        print(
            f"{epoch:<9d} {train_loss:<11.6f} {valid_loss:<11.6f} {acc:<9.6f} {1 - acc:<11.6f}"
            f" {el // 60:02d}:{el % 60:02d}"
        )
