"""A ``SimpleFeedForwardEstimator`` trained as GluonTS's (MXNet-era) ``Trainer`` trains one, its
per-epoch log lines mirrored to MLflow by the team's log handler, then scored by GluonTS's
``Evaluator`` on a held-out backtest.

Plain PyTorch + numpy + the plain ``mlflow`` API (no GluonTS here).  What is imitated:

* ``SimpleFeedForwardEstimator(prediction_length, context_length, num_hidden_dimensions,
  distr_output=StudentTOutput(), trainer=Trainer(epochs, num_batches_per_epoch, batch_size,
  learning_rate, clip_gradient, weight_decay, learning_rate_decay_factor, patience,
  minimum_learning_rate))``: an MLP from the mean-scaled context window (``MeanScaler``: the
  mean absolute observed value of the context) to the Student-t parameters of every horizon
  step; the loss is the negative log-likelihood of the scaled target, masked by
  ``observed_values`` (missing values are NaN in the dataset and do not count);
* the ``Trainer``: ``num_batches_per_epoch`` batches of ``batch_size`` windows drawn by the
  ``ExpectedNumInstanceSampler`` from the training range, Adam, gradient clipping at
  ``clip_gradient``, and the ``LearningRateReduction`` on ``epoch_loss`` (``patience`` epochs,
  ``learning_rate_decay_factor``, down to ``minimum_learning_rate``);
* its log lines ``Epoch[3] Learning rate is 0.001``, ``Epoch[3] Elapsed time 1.203 seconds``,
  ``Epoch[3] Evaluation metric 'epoch_loss'=1.234567``, ``Epoch[3] Evaluation metric
  'validation_epoch_loss'=1.3``, which the team's handler writes as ``learning_rate``,
  ``elapsed_time``, ``epoch_loss`` and ``validation_epoch_loss`` at ``step = epoch`` (from 0);
* after training, ``make_evaluation_predictions(num_samples=100)`` and ``Evaluator``'s aggregate
  metrics at step 0: ``MASE``, ``sMAPE``, ``MSIS``, ``mean_wQuantileLoss``, ``Coverage[0.9]``
  (written ``Coverage_0.9``, MLflow refusing brackets).

Data: generated hourly electricity-meter series (``num_series`` meters of ``history_weeks``
weeks, a level, daily and weekly profiles, a slow trend, noise) with ``num_feat`` dynamic
weather covariates per series (``feat_dynamic_real``; the team keeps them in the entries for a
later DeepAR).  The last ``prediction_length`` points are the backtest, the ``val_windows``
windows before them the validation set, the rest the training range.  The team's new meters
(``--new_meters``) arrive from the utility's export when epoch ``--new_meters_epoch`` starts;
the export writes missing readings as ``--export_fill`` (``nan`` or a number).  Written without
looking at the doctor.

Faults are real settings and data: ``--learning_rate``; ``--export_fill``; ``--num_series`` /
``--history_weeks`` / ``--num_hidden_dimensions``; ``--cache_data`` (the team's per-epoch
instance cache).
"""

import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--num_series": 60,
        "--history_weeks": 8,
        "--num_feat": 8,
        "--prediction_length": 24,
        "--context_length": 72,
        "--val_windows": 3,
        "--num_hidden_dimensions": "64,64",
        "--epochs": 30,
        "--num_batches_per_epoch": 50,
        "--batch_size": 32,
        "--learning_rate": 1e-3,
        "--clip_gradient": 10.0,
        "--weight_decay": 1e-8,
        "--learning_rate_decay_factor": 0.5,
        "--patience": 10,
        "--minimum_learning_rate": 5e-5,
        "--new_meters": 0,
        "--new_meters_epoch": 12,
        "--export_fill": "nan",
        "--outage_rate": 0.05,
        "--cache_data": 0,
    }
)
rng = _setup.seeded(args.seed)
PL, CL = args.prediction_length, args.context_length


def make_meters(n, rng):
    T = args.history_weeks * 168
    t = np.arange(T)
    level = rng.lognormal(3.5, 0.5, n)[:, None]
    daily = 1 + 0.35 * np.sin(2 * np.pi * (t[None] - rng.integers(0, 24, (n, 1))) / 24)
    weekly = 1 + 0.15 * (((t // 24) % 7)[None] >= 5) * rng.choice([-1, 1], (n, 1))
    trend = 1 + rng.normal(0, 0.1, (n, 1)) * t[None] / T
    y = level * daily * weekly * trend * (1 + rng.normal(0, 0.08, (n, T)))
    feat = rng.normal(0, 1, (n, args.num_feat, T))
    return np.maximum(y, 0.0), feat


def export(y, rng):
    """The utility's export: whole outage days missing, written as ``export_fill``."""
    y = y.copy()
    n, T = y.shape
    for i in range(n):
        for d in range(T // 24):
            if rng.random() < args.outage_rate:
                y[i, d * 24 : (d + 1) * 24] = np.nan
    if args.export_fill != "nan":
        y = np.where(np.isnan(y), float(args.export_fill), y)
    return y


target, feat = make_meters(args.num_series, rng)
T = target.shape[1]
TEST_START = T - PL
VAL_START = TEST_START - args.val_windows * PL
train_series = [(target[i], feat[i]) for i in range(args.num_series)]


def sample_batch(series, rng):
    """ExpectedNumInstanceSampler over the training ranges: windows end before VAL_START."""
    inst = []
    for _ in range(args.batch_size):
        y, f = series[rng.integers(len(series))]
        s = rng.integers(0, VAL_START - CL - PL + 1)
        inst.append(
            {
                "past_target": y[s : s + CL],
                "future_target": y[s + CL : s + CL + PL],
                "feat_dynamic_real": f,  # the entry's other fields travel with the instance
            }
        )
    return inst


class MeanScaler:
    @staticmethod
    def __call__(past, observed):
        num = (past.abs() * observed).sum(1, keepdim=True)
        den = observed.sum(1, keepdim=True)
        return torch.clamp(num / torch.clamp(den, min=1.0), min=1e-10)


hidden = [int(h) for h in args.num_hidden_dimensions.split(",")]
layers, d = [], CL
for h in hidden:
    layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
    d = h
net = torch.nn.Sequential(*layers, torch.nn.Linear(d, PL * 3))
scaler = MeanScaler()
optim = torch.optim.Adam(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)


def distribution(past):
    observed = (~torch.isnan(past)).float()
    past = torch.nan_to_num(past)
    scale = scaler(past, observed)
    out = net(past / scale).view(-1, PL, 3)
    mu = out[..., 0]
    sigma = torch.nn.functional.softplus(out[..., 1]) + 1e-4
    df = 2.0 + torch.nn.functional.softplus(out[..., 2])
    return torch.distributions.StudentT(df, mu, sigma), scale


def nll(past, future):
    dist, scale = distribution(past)
    observed = ~torch.isnan(future)
    lp = dist.log_prob(torch.nan_to_num(future) / scale)
    return -(lp * observed).sum() / observed.sum().clamp(min=1)


def to_tensors(inst):
    past = torch.tensor(np.stack([i["past_target"] for i in inst]), dtype=torch.float32)
    fut = torch.tensor(np.stack([i["future_target"] for i in inst]), dtype=torch.float32)
    return past, fut


def validation_loss():
    past, fut = [], []
    for y, _ in train_series[: args.num_series]:
        for w in range(args.val_windows):
            s = VAL_START + w * PL
            past.append(y[s - CL : s])
            fut.append(y[s : s + PL])
    with torch.no_grad():
        return nll(
            torch.tensor(np.stack(past), dtype=torch.float32),
            torch.tensor(np.stack(fut), dtype=torch.float32),
        ).item()


def evaluate(rng):
    """Evaluator's aggregate metrics on the backtest window, 100 sample paths."""
    past = torch.tensor(target[:, TEST_START - CL : TEST_START], dtype=torch.float32)
    y = target[:, TEST_START:]
    with torch.no_grad():
        dist, scale = distribution(past)
        samples = (dist.sample((100,)) * scale).numpy()
    med = np.median(samples, 0)
    q = {a: np.quantile(samples, a, 0) for a in (0.1, 0.5, 0.9)}
    ins = target[:, :TEST_START]
    naive = np.mean(np.abs(ins[:, 24:] - ins[:, :-24]), 1)
    mase = np.mean(np.mean(np.abs(y - med), 1) / naive)
    smape = np.mean(2 * np.abs(y - med) / (np.abs(y) + np.abs(med) + 1e-9))
    lo, hi = np.quantile(samples, 0.05, 0), np.quantile(samples, 0.95, 0)
    msis = np.mean(
        np.mean(
            (hi - lo) + 2 / 0.1 * (lo - y) * (y < lo) + 2 / 0.1 * (y - hi) * (y > hi),
            1,
        )
        / naive
    )
    wql = np.mean(
        [
            2 * np.sum(np.abs((y - q[a]) * ((y <= q[a]) - a))) / np.sum(np.abs(y))
            for a in (0.1, 0.5, 0.9)
        ]
    )
    cov = np.mean(y <= q[0.9])
    return {
        "MASE": float(mase),
        "sMAPE": float(smape),
        "MSIS": float(msis),
        "mean_wQuantileLoss": float(wql),
        "Coverage_0.9": float(cov),
    }


class CachedInstances:
    """The team's cache of transformed training instances (``cache_data``), created in the
    epoch loop: each epoch's instances are kept for re-use by the 'next run'."""

    store = []

    def __init__(self, batches):
        self.batches = [
            [dict(i, feat_dynamic_real=i["feat_dynamic_real"].copy()) for i in b] for b in batches
        ]
        CachedInstances.store.append(self)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    lr, best, bad_epochs = args.learning_rate, np.inf, 0
    for epoch in range(args.epochs):
        if args.new_meters and epoch == args.new_meters_epoch:
            y_new, f_new = make_meters(args.new_meters, np.random.default_rng(args.seed + 77))
            y_new = export(y_new, np.random.default_rng(args.seed + 78))
            train_series += [(y_new[i], f_new[i]) for i in range(args.new_meters)]
            print(f"added {args.new_meters} meters from the export", flush=True)
        t0 = time.time()
        net.train()
        losses, batches = [], []
        for _ in range(args.num_batches_per_epoch):
            inst = sample_batch(train_series, rng)
            if args.cache_data:
                batches.append(inst)
            past, fut = to_tensors(inst)
            loss = nll(past, fut)
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip_gradient)
            optim.step()
            losses.append(loss.item())
        if args.cache_data:
            CachedInstances(batches)
        epoch_loss = float(np.mean(losses))
        net.eval()
        val = validation_loss()
        elapsed = time.time() - t0
        print(f"Epoch[{epoch}] Learning rate is {lr}", flush=True)
        print(f"Epoch[{epoch}] Elapsed time {elapsed:.3f} seconds", flush=True)
        print(f"Epoch[{epoch}] Evaluation metric 'epoch_loss'={epoch_loss:.6f}", flush=True)
        print(f"Epoch[{epoch}] Evaluation metric 'validation_epoch_loss'={val:.6f}", flush=True)
        mlflow.log_metrics(
            {
                "learning_rate": lr,
                "elapsed_time": elapsed,
                "epoch_loss": epoch_loss,
                "validation_epoch_loss": val,
            },
            step=epoch,
        )
        if epoch_loss < best:
            best, bad_epochs = epoch_loss, 0
        else:
            bad_epochs += 1
            if bad_epochs >= args.patience:
                lr = max(args.minimum_learning_rate, lr * args.learning_rate_decay_factor)
                for g in optim.param_groups:
                    g["lr"] = lr
                bad_epochs = 0
    metrics = evaluate(np.random.default_rng(args.seed + 5))
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    mlflow.log_metrics(metrics, step=0)
