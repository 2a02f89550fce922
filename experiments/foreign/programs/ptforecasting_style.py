"""A DeepAR forecaster trained the way PyTorch Forecasting's ``DeepAR`` tutorial trains one,
under a Lightning ``Trainer`` with an ``MLFlowLogger`` and a ``LearningRateMonitor``.

Plain PyTorch + numpy + the plain ``mlflow`` API (no pytorch-forecasting, no Lightning here).
What is imitated:

* ``TimeSeriesDataSet`` windows (``max_encoder_length``, ``max_prediction_length``) over a
  ``training_cutoff = max(time_idx) - max_prediction_length``; the validation set
  ``from_dataset(..., predict=True)``: the last window of every series; a
  ``GroupNormalizer(groups=["series"])`` target normaliser (per-series mean and std over the
  training period); ``time_varying_known_reals`` (day of week, promotion),
  ``static_categoricals`` (the series id, embedded);
* ``DeepAR``: an LSTM (``rnn_layers``, ``hidden_size``, ``dropout``) fed the previous target
  and the covariates, ``NormalDistributionLoss`` (the Gaussian negative log-likelihood on the
  normalised target, negative once the model is confident), teacher forcing for the loss;
* ``BaseModel.step``'s ``self.log(f"{stage}_loss", on_step=training, on_epoch=True)`` and
  ``log_metrics`` for ``logging_metrics`` SMAPE, MAE, RMSE, MAPE, MASE on the point forecast
  (the distribution's mean, in the original scale): under Lightning's ``MLFlowLogger`` the
  training ones become ``train_loss_step`` / ``train_SMAPE_step`` / ... (every
  ``log_every_n_steps``, at step = global step) and ``train_loss_epoch`` / ``train_SMAPE_epoch``
  / ...; validation ones ``val_loss``, ``val_SMAPE``, ``val_MAE``, ``val_RMSE``, ``val_MAPE``,
  ``val_MASE`` at the epoch's last step; every call also logs ``epoch``; the
  ``LearningRateMonitor``'s ``lr-Adam`` at each epoch start;
* ``Trainer(gradient_clip_val=0.1, limit_train_batches=50)``, Adam, PF's
  ``reduce_on_plateau_patience`` (``ReduceLROnPlateau`` on ``val_loss``, factor 1/
  ``reduce_on_plateau_reduction``, ``min_lr`` ``reduce_on_plateau_min_lr``);
* the team's ``CoverageCallback``: every ``--coverage_every`` epochs it draws ``--n_samples``
  sample paths of the validation windows (DeepAR's ``predict(mode="samples")``: the batch
  ``repeat_interleave``d ``n_samples`` times and decoded autoregressively) and logs
  ``val_coverage_80`` (the share of actuals inside the sampled 10-90 % band).

Data: generated daily sales of ``--n_series`` store-item series (level, trend, weekly and
monthly seasonality, promotions, noise), 420 days.  Written without looking at the doctor.

Faults are real code paths and arguments: ``--learning_rate`` typed a hundred times too
large; ``--freeze_rnn`` (the team's fine-tuning flag, meant for a run that loads a pretrained
checkpoint, set here with none, so the LSTM keeps its random weights); ``--n_samples`` typed
with three extra zeros; a short ``--history_days`` with a wide network, no dropout and every
batch each epoch.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_series": 64,
        "--history_days": 420,
        "--max_encoder_length": 56,
        "--max_prediction_length": 14,
        "--batch_size": 64,
        "--hidden_size": 24,
        "--rnn_layers": 2,
        "--dropout": 0.1,
        "--learning_rate": 0.01,
        "--gradient_clip_val": 0.1,
        "--max_epochs": 20,
        "--limit_train_batches": 50,
        "--log_every_n_steps": 10,
        "--reduce_on_plateau_patience": 3,
        "--reduce_on_plateau_reduction": 2.0,
        "--reduce_on_plateau_min_lr": 1e-5,
        "--coverage_every": 5,
        "--n_samples": 100,
        "--freeze_rnn": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
S, T = args.n_series, args.history_days
g = np.random.default_rng(500 + args.seed)
t = np.arange(T)
level = g.uniform(20, 200, S)[:, None]
trend = g.normal(0, 0.0006, S)[:, None]
weekly = g.uniform(0.05, 0.35, S)[:, None] * np.sin(
    2 * np.pi * (t[None] + g.integers(7, size=S)[:, None]) / 7
)
monthly = g.uniform(0.0, 0.15, S)[:, None] * np.cos(2 * np.pi * t[None] / 30.5)
promo = (g.uniform(size=(S, T)) < 0.06).astype(float)
mean = level * np.exp(trend * t[None]) * (1 + weekly + monthly + 0.5 * promo)
sales = np.maximum(0.0, mean * (1 + g.normal(0, 0.06, (S, T))))
dow = (t % 7) / 6.0
print(f"{S} series x {T} days, mean sales {sales.mean():.1f}", flush=True)

enc, dec = args.max_encoder_length, args.max_prediction_length
L = enc + dec
training_cutoff = T - 1 - dec
# GroupNormalizer(groups=["series"]): center and scale per series over the training period
g_mean = sales[:, : training_cutoff + 1].mean(1)
g_std = sales[:, : training_cutoff + 1].std(1) + 1e-8
normed = (sales - g_mean[:, None]) / g_std[:, None]
train_index = [(s, i) for s in range(S) for i in range(0, training_cutoff + 1 - L + 1)]
val_index = [(s, T - L) for s in range(S)]  # predict=True: the last window per series
print(
    f"TimeSeriesDataSet: {len(train_index)} training samples, {len(val_index)} validation",
    flush=True,
)


def batch(index):
    s = np.array([i[0] for i in index])
    start = np.array([i[1] for i in index])
    cols = start[:, None] + np.arange(L)[None]
    y = normed[s[:, None], cols]
    known = np.stack([dow[cols], promo[s[:, None], cols]], -1)
    return (
        torch.tensor(s),
        torch.tensor(y, dtype=torch.float32),
        torch.tensor(known, dtype=torch.float32),
        torch.tensor(sales[s[:, None], cols], dtype=torch.float32),
    )


# ----------------------------------------------------------------------------- DeepAR
class DeepAR(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(S, 4)
        self.rnn = nn.LSTM(
            1 + 2 + 4,
            args.hidden_size,
            args.rnn_layers,
            batch_first=True,
            dropout=args.dropout if args.rnn_layers > 1 else 0.0,
        )
        self.distribution_projector = nn.Linear(args.hidden_size, 2)

    def inputs(self, s, y_prev, known):
        emb = self.embedding(s)[:, None].expand(-1, known.shape[1], -1)
        return torch.cat([y_prev[..., None], known, emb], -1)

    def forward(self, s, y, known):
        """Teacher forcing: the previous target is the input at every step."""
        y_prev = torch.cat([y[:, :1], y[:, :-1]], 1)
        h, _ = self.rnn(self.inputs(s, y_prev, known))
        p = self.distribution_projector(h[:, enc:])  # the decoder steps
        return p[..., 0], nn.functional.softplus(p[..., 1]) + 1e-4

    @torch.no_grad()
    def sample(self, s, y, known, n_samples):
        s = s.repeat_interleave(n_samples, 0)
        y = y.repeat_interleave(n_samples, 0)
        known = known.repeat_interleave(n_samples, 0)
        y_prev = torch.cat([y[:, :1], y[:, : enc - 1]], 1)
        _, state = self.rnn(self.inputs(s, y_prev, known[:, :enc]))
        last, out = y[:, enc - 1], []
        for k in range(dec):
            h, state = self.rnn(
                self.inputs(s, last[:, None], known[:, enc + k : enc + k + 1]), state
            )
            p = self.distribution_projector(h[:, 0])
            last = p[:, 0] + (nn.functional.softplus(p[:, 1]) + 1e-4) * torch.randn(len(p))
            out.append(last)
        return torch.stack(out, 1)


def nll(mu, sigma, target):
    return -torch.distributions.Normal(mu, sigma).log_prob(target).mean()


def point_metrics(mu, s, raw):
    """SMAPE, MAE, RMSE, MAPE, MASE of the mean forecast in the original scale."""
    pred = (
        mu * torch.tensor(g_std, dtype=torch.float32)[s][:, None]
        + torch.tensor(g_mean, dtype=torch.float32)[s][:, None]
    )
    act = raw[:, enc:]
    err = pred - act
    scale = (raw[:, 1:enc] - raw[:, : enc - 1]).abs().mean(1, keepdim=True) + 1e-8
    return {
        "SMAPE": (2 * err.abs() / (pred.abs() + act.abs() + 1e-8)).mean().item(),
        "MAE": err.abs().mean().item(),
        "RMSE": err.pow(2).mean().sqrt().item(),
        "MAPE": (err.abs() / (act.abs() + 1e-8)).mean().item(),
        "MASE": (err.abs() / scale).mean().item(),
    }


model = DeepAR()
if args.freeze_rnn:  # the team's fine-tuning flag: keep the (pretrained) encoder fixed
    for p in model.rnn.parameters():
        p.requires_grad_(False)
    print("freeze_rnn: rnn parameters frozen (no checkpoint given)", flush=True)
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.Adam(params, lr=args.learning_rate)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
    optimizer,
    mode="min",
    factor=1.0 / args.reduce_on_plateau_reduction,
    patience=args.reduce_on_plateau_patience,
    cooldown=args.reduce_on_plateau_patience,
    min_lr=args.reduce_on_plateau_min_lr,
)
n_params = sum(p.numel() for p in model.parameters())
print(f"Number of parameters in network: {n_params / 1e3:.1f}k", flush=True)

with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params({"loss": "NormalDistributionLoss()", "target_normalizer": "GroupNormalizer"})
    global_step = 0
    n_batches = min(
        args.limit_train_batches or 10**9, int(np.ceil(len(train_index) / args.batch_size))
    )
    for epoch in range(args.max_epochs):
        t0 = time.time()
        mlflow.log_metrics({"lr-Adam": optimizer.param_groups[0]["lr"]}, step=global_step)
        model.train()
        perm = rng.permutation(len(train_index))
        sums, count = {}, 0
        for b in range(n_batches):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            s, y, known, raw = batch([train_index[i] for i in idx])
            mu, sigma = model(s, y, known)
            loss = nll(mu, sigma, y[:, enc:])
            optimizer.zero_grad()
            loss.backward()
            if args.gradient_clip_val:
                nn.utils.clip_grad_norm_(params, args.gradient_clip_val)
            optimizer.step()
            logs = {"loss": loss.item(), **point_metrics(mu.detach(), s, raw)}
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            count += len(idx)
            if (global_step + 1) % args.log_every_n_steps == 0:
                mlflow.log_metrics(
                    {f"train_{k}_step": v for k, v in logs.items()} | {"epoch": epoch},
                    step=global_step,
                )
            global_step += 1
        model.eval()
        with torch.no_grad():
            s, y, known, raw = batch(val_index)
            mu, sigma = model(s, y, known)
            val = {"loss": nll(mu, sigma, y[:, enc:]).item(), **point_metrics(mu, s, raw)}
        epoch_logs = {f"train_{k}_epoch": v / count for k, v in sums.items()}
        epoch_logs |= {f"val_{k}": v for k, v in val.items()} | {"epoch": epoch}
        if args.coverage_every and (epoch + 1) % args.coverage_every == 0:  # CoverageCallback
            paths = model.sample(s, y, known, args.n_samples).reshape(len(s), args.n_samples, dec)
            lo, hi = paths.quantile(0.1, dim=1), paths.quantile(0.9, dim=1)
            target = y[:, enc:]
            epoch_logs["val_coverage_80"] = ((target >= lo) & (target <= hi)).float().mean().item()
        mlflow.log_metrics(epoch_logs, step=global_step - 1)
        scheduler.step(val["loss"])
        print(
            f"Epoch {epoch}: {n_batches}/{n_batches} [{time.time() - t0:.1f}s] "
            f"train_loss_epoch={epoch_logs['train_loss_epoch']:.4f} val_loss={val['loss']:.4f} "
            f"val_SMAPE={val['SMAPE']:.4f}",
            flush=True,
        )
    print(f"`Trainer.fit` stopped: `max_epochs={args.max_epochs}` reached.", flush=True)
