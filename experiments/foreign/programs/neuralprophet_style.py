"""A daily-demand forecaster fitted the NeuralProphet way (``NeuralProphet(...).fit(df,
freq="D", validation_df=...)``), its per-epoch metrics mirrored to MLflow by the team's logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no NeuralProphet, no Lightning here).  What is
imitated:

* ``TimeNet``: a piecewise-linear ``trend`` (``n_changepoints`` over the first
  ``changepoints_range`` = 0.8 of the history), ``yearly_seasonality`` and
  ``weekly_seasonality`` as Fourier terms (6 and 3 orders, additive), an AR-Net over
  ``n_lags`` lagged values (``ar_layers``: ``[]`` is linear, else hidden layers with ReLU),
  ``n_forecasts`` = 1;
* the data: ``df`` with ``ds`` and ``y``, normalised the ``"soft"`` way (the 0.1/0.9 quantiles
  of the training part map to 0/1); ``valid_p`` of the history's end held out;
* the fit: ``AdamW`` (``weight_decay`` 1e-3), ``OneCycleLR`` (``pct_start`` 0.3,
  ``div_factor`` 10, ``final_div_factor`` 1e3, cosine annealing) up to ``learning_rate``,
  ``SmoothL1Loss`` on the normalised values, ``epochs`` epochs of ``batch_size``;
* the metrics NeuralProphet's ``MetricsLogger`` collects every epoch: ``Loss`` (the
  SmoothL1), ``RegLoss`` (with the ``trend_reg`` / ``ar_reg`` penalty), ``MAE`` and ``RMSE`` in
  the data's units, and for the validation set ``Loss_val``, ``RegLoss_val``, ``MAE_val``,
  ``RMSE_val``; the team's logger writes them at ``step`` = the epoch from 1, and NeuralProphet's
  progress line ``Epoch[e/E]: ... Loss=... RegLoss=... MAE=... RMSE=...``.

Data: a generated daily sales series of one store (trend with a change in slope, yearly and
weekly seasonality, autocorrelated noise), ``n_days`` days.  Written without looking at the
doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--epochs``, ``--batch_size``, ``--n_lags``, ``--ar_layers`` (comma
  separated widths), ``--n_changepoints``, ``--trend_reg``, ``--valid_p``, ``--n_days``;
* ``--holiday_refresh_epoch k``: the team's loader runs a prefetch thread that fills a bounded
  queue of batches while it holds the holiday-table lock; from epoch k the training loop
  reloads the holiday table (taking that lock) when a batch shows the old table's version.
"""

import math
import queue
import threading
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_days": 1461,
        "--learning_rate": 0.01,
        "--epochs": 80,
        "--batch_size": 16,
        "--n_lags": 14,
        "--ar_layers": "",
        "--n_changepoints": 10,
        "--trend_reg": 0.0,
        "--ar_reg": 0.0,
        "--valid_p": 0.2,
        "--noise": 6.0,
        "--holiday_refresh_epoch": 0,
        "--prefetch": 4,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(500 + args.seed)
t = np.arange(args.n_days, dtype=np.float64)
trend = 120 + 0.05 * t + 0.04 * np.clip(t - 0.55 * args.n_days, 0, None)
yearly = 18 * np.sin(2 * np.pi * t / 365.25) + 7 * np.cos(4 * np.pi * t / 365.25)
weekly = np.array([0, 4, 6, 5, 9, 22, 15])[(t.astype(int) + 3) % 7]
ar = np.zeros(args.n_days)
eps = drng.normal(0, args.noise, args.n_days)
for i in range(1, args.n_days):
    ar[i] = 0.7 * ar[i - 1] + eps[i]
y = trend + yearly + weekly + ar

n_val = int(round(args.valid_p * args.n_days))
n_train = args.n_days - n_val
q10, q90 = np.quantile(y[:n_train], [0.1, 0.9])
shift, scale = q10, q90 - q10
yn = (y - shift) / scale
tn = t / (n_train - 1)


def fourier(period, order):
    k = np.arange(1, order + 1)
    a = 2 * np.pi * t[:, None] * k[None, :] / period
    return np.concatenate([np.sin(a), np.cos(a)], 1)


season = np.concatenate([fourier(365.25, 6), fourier(7, 3)], 1).astype(np.float32)
idx = np.arange(args.n_lags, args.n_days)
lags = np.stack([yn[i - args.n_lags : i] for i in idx]) if args.n_lags else np.zeros((len(idx), 0))
T = torch.tensor(tn[idx], dtype=torch.float32)
S = torch.tensor(season[idx])
L = torch.tensor(lags, dtype=torch.float32)
Y = torch.tensor(yn[idx], dtype=torch.float32)
is_train = idx < n_train
tr_rows = np.flatnonzero(is_train)
va_rows = np.flatnonzero(~is_train)


# ----------------------------------------------------------------------------- model
class TimeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.trend_k0 = nn.Parameter(torch.zeros(1))
        self.trend_m = nn.Parameter(torch.zeros(1))
        self.trend_deltas = nn.Parameter(torch.zeros(args.n_changepoints))
        self.register_buffer("changepoints", torch.linspace(0, 0.8, args.n_changepoints + 1)[1:])
        self.season_params = nn.Linear(S.shape[1], 1, bias=False)
        nn.init.zeros_(self.season_params.weight)
        widths = [int(w) for w in args.ar_layers.split(",") if w]
        layers, d = [], args.n_lags
        for w in widths:
            layers += [nn.Linear(d, w), nn.ReLU()]
            d = w
        self.ar_net = nn.Sequential(*layers, nn.Linear(d, 1, bias=False)) if args.n_lags else None

    def forward(self, t, s, lag):
        past = (t[:, None] - self.changepoints[None, :]).clamp_min(0)
        trend = self.trend_m + self.trend_k0 * t + (past * self.trend_deltas).sum(1)
        out = trend + self.season_params(s)[:, 0]
        if self.ar_net is not None:
            out = out + self.ar_net(lag)[:, 0]
        return out

    def reg(self):
        r = args.trend_reg * self.trend_deltas.abs().mean()
        if self.ar_net is not None and args.ar_reg:
            r = r + args.ar_reg * self.ar_net[-1].weight.abs().mean()
        return r


model = TimeNet()
loss_func = nn.SmoothL1Loss(reduction="none")
optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-3)
steps_per_epoch = math.ceil(len(tr_rows) / args.batch_size)
scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer,
    max_lr=args.learning_rate,
    epochs=args.epochs,
    steps_per_epoch=steps_per_epoch,
    pct_start=0.3,
    anneal_strategy="cos",
    div_factor=10.0,
    final_div_factor=1e3,
)

# ----------------------------------------------------------------------------- the team's loader
holiday_lock = threading.Lock()
holidays = {"version": 1}


def prefetch(order, q):
    """The team's prefetch thread: fills the bounded queue while it holds the holiday lock (the
    batches are tagged with the holiday table they were built with)."""
    with holiday_lock:
        for i in range(0, len(order), args.batch_size):
            rows = order[i : i + args.batch_size]
            q.put((rows, holidays["version"]))
    q.put(None)


def batches(order):
    q = queue.Queue(maxsize=args.prefetch)
    th = threading.Thread(target=prefetch, args=(order, q), daemon=True)
    th.start()
    return q


def metrics(rows):
    with torch.no_grad():
        pred = model(T[rows], S[rows], L[rows])
        loss = loss_func(pred, Y[rows]).mean().item()
        err = (pred - Y[rows]).numpy() * scale
        return (
            loss,
            loss + float(model.reg()),
            float(np.abs(err).mean()),
            float(np.sqrt((err**2).mean())),
        )


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"INFO - (NP.df_utils._infer_frequency) - Major frequency D corresponds to 100.0% of "
        f"the data.\nINFO - (NP.config.init_data_params) - Setting normalization to global as "
        f"only one dataframe provided for training.\n{len(tr_rows)} training samples, "
        f"{len(va_rows)} validation samples (valid_p {args.valid_p}), n_lags {args.n_lags}",
        flush=True,
    )
    t_start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(tr_rows)
        q = batches(order)
        while (item := q.get()) is not None:
            rows, version = item
            if (
                args.holiday_refresh_epoch
                and epoch >= args.holiday_refresh_epoch
                and version < epoch - args.holiday_refresh_epoch + 2
            ):
                # the holiday table is reloaded once the epoch's first batch shows the old one
                print(f"Epoch {epoch}: reloading the holiday table", flush=True)
                with holiday_lock:
                    holidays["version"] += 1
            pred = model(T[rows], S[rows], L[rows])
            loss = loss_func(pred, Y[rows]).mean() + model.reg()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        tl, trl, tmae, trmse = metrics(tr_rows)
        vl, vrl, vmae, vrmse = metrics(va_rows)
        row = {
            "Loss": tl,
            "RegLoss": trl,
            "MAE": tmae,
            "RMSE": trmse,
            "Loss_val": vl,
            "RegLoss_val": vrl,
            "MAE_val": vmae,
            "RMSE_val": vrmse,
        }
        mlflow.log_metrics(row, step=epoch)
        print(
            f"Epoch[{epoch}/{args.epochs}]: 100%|##########| Loss={tl:.3e}, RegLoss={trl:.3e}, "
            f"MAE={tmae:.2f}, RMSE={trmse:.2f}, MAE_val={vmae:.2f}, RMSE_val={vrmse:.2f}",
            flush=True,
        )
    print(f"fit took {time.time() - t_start:.1f} s", flush=True)
