"""Hourly load forecasting as a darts ``NBEATSModel`` trains it (a ``TorchForecastingModel``
under PyTorch Lightning), logged by Lightning's ``MLFlowLogger``, then backtested and used to
forecast, as a team's darts script does.

Plain PyTorch + numpy + the plain ``mlflow`` API (no darts, no Lightning here).  What is
imitated, as darts/Lightning log it:

* ``train_loss`` (the batch's MSE on the scaled series) from ``training_step`` with Lightning's
  default ``log_every_n_steps=50``: logged when ``(global_step + 1) % 50 == 0`` at
  ``step = global_step`` (optimizer steps from 0);
* at each epoch's end, after the validation loop, ``val_loss`` (the mean MSE over the
  validation windows) and the ``torch_metrics`` a user passes (here a ``MetricCollection`` of
  ``SymmetricMeanAbsolutePercentageError`` and ``MeanAbsoluteError``), as
  ``val_SymmetricMeanAbsolutePercentageError``, ``val_MeanAbsoluteError`` and, over the epoch's
  training batches, ``train_SymmetricMeanAbsolutePercentageError``, ``train_MeanAbsoluteError``
  (sMAPE as torchmetrics computes it, a fraction in [0, 2]), all at the epoch's last
  ``global_step``;
* ``epoch`` beside every logged point, as Lightning adds it;
* ``lr-Adam`` from a ``LearningRateMonitor(logging_interval="epoch")`` at each epoch's start;
* after ``fit``, the user's backtest on the held-out tail: ``darts.metrics.mase`` (seasonality
  24) and ``smape`` (percent, as darts returns it) of ``predict(n=forecast_horizon)`` from the
  end of each training series, logged once as ``backtest_mase`` and ``backtest_smape``; then
  ``predict(n=forecast_horizon)`` from the end of the full series (the production forecast)
  saved as a CSV artifact.  As in darts, ``n > output_chunk_length`` forecasts
  auto-regressively and then needs past covariates that extend ``n - output_chunk_length``
  steps past the series' end; if they do not, darts raises ``ValueError``.

Data: ``--n_series`` synthetic hourly building-load series (daily and weekly seasonality, a
slow trend, AR(1) noise, a temperature response) and an hourly temperature series per building
used as ``past_covariates`` (observed, known to the series' end only).  Each series is split
``--train_fraction`` / rest into train and validation, scaled by a ``Scaler`` (min-max fitted
on the training part; like sklearn it ignores NaN when fitting).  Model: N-BEATS generic
architecture (``--num_stacks`` x ``--num_blocks`` blocks of ``--num_layers`` fully connected
layers of ``--layer_widths`` units, backcast/forecast residual stacking), input the target and
covariate windows of ``--input_chunk_length`` hours, output ``--output_chunk_length`` hours.
Training as darts does: every window of every training series each epoch, shuffled,
``--batch_size``, ``MSELoss``, Adam ``--lr`` (darts' default ``optimizer_kwargs={"lr": 1e-3}``),
optional ``--lr_scheduler`` (``exponential``: ExponentialLR gamma 0.95 a epoch;
``plateau``: ReduceLROnPlateau on ``val_loss``, patience 2, factor 0.5).  No gradient clipping
(darts' default).  Written without looking at the doctor.

Faults are real settings or data: ``--lr`` far too high; ``--outage_hours N``: one meter's
export has an N-hour outage as NaN and the script skips ``fill_missing_values()``; a tiny
training set (``--length`` short, one series) with a wide model trained for many epochs; a
``--forecast_horizon`` longer than ``output_chunk_length`` while the covariates end with the
series (darts' ValueError at the production forecast, after training).
"""

import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
from torch import nn

args = _setup.parse_flags(
    {
        "--n_series": 6,
        "--length": 1200,
        "--train_fraction": 0.8,
        "--input_chunk_length": 48,
        "--output_chunk_length": 12,
        "--forecast_horizon": 12,
        "--num_stacks": 2,
        "--num_blocks": 1,
        "--num_layers": 2,
        "--layer_widths": 128,
        "--dropout": 0.0,
        "--batch_size": 32,
        "--n_epochs": 15,
        "--lr": 1e-3,
        "--lr_scheduler": "none",
        "--noise": 0.05,
        "--outage_hours": 0,
        "--random_state": ("seed", 42),
    }
)
rng = _setup.seeded(args.seed)
LOG_EVERY_N_STEPS = 50
ICL, OCL = args.input_chunk_length, args.output_chunk_length

# ----------------------------------------------------------------------------- data
t = np.arange(args.length, dtype=np.float64)
targets, covs = [], []
for _ in range(args.n_series):
    temp = (
        12
        + 8 * np.sin(2 * np.pi * (t - 6) / 24)
        + 5 * np.sin(2 * np.pi * t / (24 * 30) + rng.uniform(0, 6.28))
        + rng.normal(0, 1.0, args.length).cumsum() * 0.05
    )
    ar = np.zeros(args.length)
    e = rng.normal(0, 1, args.length)
    for k in range(1, args.length):
        ar[k] = 0.8 * ar[k - 1] + e[k]
    base = rng.uniform(50, 150)
    daily = np.where((t % 24 >= 7) & (t % 24 <= 19), 1.0, 0.35)
    weekly = np.where((t // 24) % 7 >= 5, 0.6, 1.0)
    load = base * (
        0.4
        + 0.6 * daily * weekly
        + 0.01 * np.maximum(temp - 18, 0)
        + 0.0002 * t / 24
        + args.noise * ar / 2.3
    )
    targets.append(load)
    covs.append(temp)
if args.outage_hours:
    # meter 2's export: an outage written as NaN; the script never calls fill_missing_values()
    s = int(args.length * 0.3)
    targets[min(2, args.n_series - 1)][s : s + args.outage_hours] = np.nan

n_train = int(args.length * args.train_fraction)


class Scaler:
    """darts' Scaler around sklearn's MinMaxScaler: per component, fitted on the train part."""

    def fit(self, xs):
        self.lo = [np.nanmin(x) for x in xs]
        self.hi = [np.nanmax(x) for x in xs]
        return self

    def transform(self, xs):
        return [(x - lo) / (hi - lo) for x, lo, hi in zip(xs, self.lo, self.hi, strict=True)]

    def inverse(self, xs):
        return [x * (hi - lo) + lo for x, lo, hi in zip(xs, self.lo, self.hi, strict=True)]


t_scaler = Scaler().fit([y[:n_train] for y in targets])
c_scaler = Scaler().fit([c[:n_train] for c in covs])
series = t_scaler.transform(targets)
cov_s = c_scaler.transform(covs)


def windows(ys, cs, lo, hi):
    """Every (input, target) window with both ends inside [lo, hi) of each series."""
    xs, ts = [], []
    for y, c in zip(ys, cs, strict=True):
        for s in range(lo, hi - ICL - OCL + 1):
            xs.append(np.concatenate([y[s : s + ICL], c[s : s + ICL]]))
            ts.append(y[s + ICL : s + ICL + OCL])
    return (
        torch.tensor(np.array(xs), dtype=torch.float32),
        torch.tensor(np.array(ts), dtype=torch.float32),
    )


X_tr, Y_tr = windows(series, cov_s, 0, n_train)
X_va, Y_va = windows(series, cov_s, n_train, args.length)


# ----------------------------------------------------------------------------- model
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        layers, d = [], 2 * ICL
        for _ in range(args.num_layers):
            layers += [nn.Linear(d, args.layer_widths), nn.ReLU()]
            if args.dropout:
                layers.append(nn.Dropout(args.dropout))
            d = args.layer_widths
        self.fc = nn.Sequential(*layers)
        self.backcast = nn.Linear(d, 2 * ICL)
        self.forecast = nn.Linear(d, OCL)

    def forward(self, x):
        h = self.fc(x)
        return self.backcast(h), self.forecast(h)


class NBEATS(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(args.num_stacks * args.num_blocks))

    def forward(self, x):
        y = 0
        for b in self.blocks:
            back, fore = b(x)
            x = x - back
            y = y + fore
        return y


model = NBEATS()
opt = torch.optim.Adam(model.parameters(), lr=args.lr)
sched = None
if args.lr_scheduler == "exponential":
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95)
elif args.lr_scheduler == "plateau":
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2, factor=0.5)
loss_fn = nn.MSELoss()


def smape(pred, y):  # torchmetrics: mean of 2|p - y| / (|p| + |y|), a fraction in [0, 2]
    return (2 * (pred - y).abs() / (pred.abs() + y.abs()).clamp_min(1.17e-6)).mean()


def forecast(model, y, c, start, n):
    """darts' predict(n): auto-regressive in chunks of OCL from index ``start``; the past
    covariates must cover every input window it needs."""
    hist = list(y[:start])
    for k in range(0, n, OCL):
        end = start + k
        if end > len(c):
            raise ValueError(
                f"For the given forecasting horizon `n={n}`, the provided past covariates at "
                "dataset index `0` do not extend far enough into the future. As "
                f"`n > output_chunk_length` the past covariates must extend at least "
                f"{n - OCL} time step(s) into the future after the end of the target series."
            )
        x = np.concatenate([np.array(hist[-ICL:]), c[end - ICL : end]])
        with torch.no_grad():
            out = model(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
        hist += list(out)
    return np.array(hist[start : start + n])


def mase(actual, pred, insample, m=24):
    scale = np.mean(np.abs(insample[m:] - insample[:-m]))
    return float(np.mean(np.abs(actual - pred)) / scale)


# ----------------------------------------------------------------------------- fit
with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"GPU available: False, used: False\n"
        f"  | Name      | Type  | Params\n"
        f"0 | criterion | MSELoss | 0\n"
        f"1 | stacks    | NBEATS | {sum(p.numel() for p in model.parameters()):,}\n"
        f"train windows {len(X_tr)}, val windows {len(X_va)}",
        flush=True,
    )
    gs = 0
    for epoch in range(args.n_epochs):
        t0 = time.time()
        mlflow.log_metrics({"lr-Adam": opt.param_groups[0]["lr"], "epoch": epoch}, step=gs)
        model.train()
        perm = torch.randperm(len(X_tr))
        tr_sm, tr_ae, tr_n = 0.0, 0.0, 0
        for b in range(0, len(X_tr), args.batch_size):
            idx = perm[b : b + args.batch_size]
            pred = model(X_tr[idx])
            loss = loss_fn(pred, Y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                tr_sm += float(smape(pred, Y_tr[idx])) * len(idx)
                tr_ae += float((pred - Y_tr[idx]).abs().mean()) * len(idx)
                tr_n += len(idx)
            if (gs + 1) % LOG_EVERY_N_STEPS == 0:
                mlflow.log_metrics({"train_loss": loss.item(), "epoch": epoch}, step=gs)
            last = loss.item()
            gs += 1
        model.eval()
        with torch.no_grad():
            pv = model(X_va)
            val_loss = float(loss_fn(pv, Y_va))
            val_sm = float(smape(pv, Y_va))
            val_ae = float((pv - Y_va).abs().mean())
        mlflow.log_metrics(
            {
                "val_loss": val_loss,
                "val_SymmetricMeanAbsolutePercentageError": val_sm,
                "val_MeanAbsoluteError": val_ae,
                "train_SymmetricMeanAbsolutePercentageError": tr_sm / tr_n,
                "train_MeanAbsoluteError": tr_ae / tr_n,
                "epoch": epoch,
            },
            step=gs - 1,
        )
        if sched is not None:
            sched.step(val_loss) if args.lr_scheduler == "plateau" else sched.step()
        n_b = (len(X_tr) + args.batch_size - 1) // args.batch_size
        print(
            f"Epoch {epoch}: 100%|##########| {n_b}/{n_b} [{time.time() - t0:.1f}s, "
            f"train_loss={last:.5f}, val_loss={val_loss:.5f}]",
            flush=True,
        )
    print(f"`Trainer.fit` stopped: `max_epochs={args.n_epochs}` reached.", flush=True)

    # ------------------------------------------------------------------------- backtest
    model.eval()
    mases, smapes = [], []
    h = min(args.forecast_horizon, args.length - n_train)
    for y, c, raw in zip(series, cov_s, targets, strict=True):
        p = forecast(model, y, c, n_train, h)
        lo, hi = np.nanmin(raw[:n_train]), np.nanmax(raw[:n_train])
        p_raw = p * (hi - lo) + lo
        act = raw[n_train : n_train + h]
        mases.append(mase(act, p_raw, raw[:n_train]))
        smapes.append(float(np.mean(200 * np.abs(act - p_raw) / (np.abs(act) + np.abs(p_raw)))))
    mlflow.log_metrics(
        {"backtest_mase": float(np.mean(mases)), "backtest_smape": float(np.mean(smapes))}
    )
    print(f"backtest MASE {np.mean(mases):.3f}, sMAPE {np.mean(smapes):.2f}%", flush=True)

    # ------------------------------------------------------------------------- forecast
    rows = []
    for i, (y, c) in enumerate(zip(series, cov_s, strict=True)):
        p = forecast(model, y, c, len(y), args.forecast_horizon)
        lo, hi = t_scaler.lo[i], t_scaler.hi[i]
        rows += [f"{i},{k},{v * (hi - lo) + lo:.3f}" for k, v in enumerate(p)]
    path = os.path.join(tempfile.mkdtemp(), "forecast.csv")
    with open(path, "w") as f:
        f.write("series,hour,load\n" + "\n".join(rows) + "\n")
    mlflow.log_artifact(path)
    print(f"forecast of {args.forecast_horizon} h saved for {len(series)} series", flush=True)
