"""A store-sales forecaster trained as Nixtla's NeuralForecast trains an ``MLP`` model
(``NeuralForecast(models=[MLP(...)], freq='D').fit(df, val_size=...)``), its Lightning
``self.log`` calls written by the ``MLFlowLogger`` the team passes through ``logger=``.

Plain PyTorch + numpy + the plain ``mlflow`` API (no NeuralForecast, no Lightning here).  What is
imitated:

* ``MLP(h, input_size, num_layers, hidden_size, loss=MAE(), valid_loss=MAE(), max_steps,
  learning_rate, num_lr_decays, val_check_steps, batch_size, windows_batch_size,
  scaler_type, random_seed, precision)``: the windows-based model (``BaseWindows``): each
  training step samples ``batch_size`` series, then ``windows_batch_size`` windows of
  ``input_size + h`` days from them; ``TemporalNorm`` with ``scaler_type`` (``standard``,
  ``robust``, ``identity``) scales each window by its input part's statistics; the training
  loss is on the scaled values, the validation loss on the original scale (the output is
  inverse-scaled before ``valid_loss``); Adam with ``StepLR(step_size = max_steps //
  num_lr_decays, gamma = 0.5)``; ``early_stop_patience_steps`` (-1: none);
* the trainer the model builds: one epoch is one pass over the series in batches of
  ``batch_size`` (a few steps), ``val_check_steps`` steps between validations
  (``check_val_every_n_epoch`` set for it), Lightning's ``log_every_n_steps`` (default 50);
* the model's ``self.log('train_loss', loss, on_epoch=True)`` (Lightning's ``train_loss_step``
  every ``log_every_n_steps`` steps and ``train_loss_epoch`` at each epoch's end),
  ``self.log('valid_loss', ...)`` and ``self.log('ptl/val_loss', ...)`` at each validation,
  ``epoch`` with every write, all at ``step = global_step``; the MLFlowLogger's names as they
  are; ``precision='16-true'`` casts the model and every batch to float16 (Lightning's
  ``HalfPrecision`` plugin).

Data: ``n_series`` generated daily store-sales series (``unique_id``, ``ds``, ``y``): a
store's level (log-normal: a few flagship stores sell far more than the rest), a trend, a
weekly and a yearly season, promotions and noise; ``val_size`` days held out at the end of each
series.  The team's data module keeps the sales tensor in ``sales_dtype`` (float16 halves
it) and hands float32 windows to the model.  Written without looking at the doctor.

Faults are real settings: ``--learning_rate``; ``--sales_dtype``; ``--n_series`` with
``--hidden_size``, ``--num_layers`` and ``--max_steps``.
"""

import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--random_seed": 1,
        "--n_series": 160,
        "--n_days": 420,
        "--h": 14,
        "--input_size": 28,
        "--num_layers": 2,
        "--hidden_size": 256,
        "--max_steps": 1000,
        "--learning_rate": 1e-3,
        "--num_lr_decays": 3,
        "--val_check_steps": 100,
        "--val_size": 42,
        "--batch_size": 32,
        "--windows_batch_size": 512,
        "--scaler_type": "standard",
        "--log_every_n_steps": 50,
        "--precision": "32",  # 32 | 16-true
        "--sales_dtype": "float32",  # the dtype the team's data module keeps the sales in
        "--early_stop_patience_steps": -1,
    }
)
rng = _setup.seeded(args.random_seed)

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(7)  # the same stores for every run
n, T = args.n_series, args.n_days
level = np.exp(drng.normal(7.0, 1.0, n))  # daily sales, a few flagship stores far above
level[drng.choice(n, max(1, n // 40), replace=False)] *= 40.0
t = np.arange(T)
trend = 1 + drng.normal(0, 0.15, (n, 1)) * t / T
weekly = 1 + 0.25 * np.sin(2 * np.pi * (t[None] + drng.integers(0, 7, (n, 1))) / 7)
yearly = 1 + 0.15 * np.sin(2 * np.pi * t[None] / 365 + drng.uniform(0, 6, (n, 1)))
promo = 1 + 0.2 * (drng.uniform(size=(n, T)) < 0.02)
Y = (level[:, None] * trend * weekly * yearly * promo * drng.lognormal(0, 0.03, (n, T))).astype(
    np.float32
)
Y = Y.astype(args.sales_dtype).astype(np.float32)  # the data module's copy, read back
train_Y = Y[:, : T - args.val_size]
L = args.input_size + args.h
dtype = torch.float16 if args.precision == "16-true" else torch.float32


# ----------------------------------------------------------------------------- model
class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layers, d = [], args.input_size
        for _ in range(args.num_layers):
            layers += [torch.nn.Linear(d, args.hidden_size), torch.nn.ReLU()]
            d = args.hidden_size
        self.mlp = torch.nn.Sequential(*layers, torch.nn.Linear(d, args.h))

    def forward(self, x):
        return self.mlp(x)


model = MLP().to(dtype)
optim = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
step_size = max(1, args.max_steps // args.num_lr_decays)
sched = torch.optim.lr_scheduler.StepLR(optim, step_size=step_size, gamma=0.5)


def temporal_norm(x):
    """TemporalNorm: statistics of each window's input part."""
    if args.scaler_type == "identity":
        return torch.zeros_like(x[:, :1]), torch.ones_like(x[:, :1])
    if args.scaler_type == "robust":
        med = x.median(1, keepdim=True).values
        mad = (x - med).abs().median(1, keepdim=True).values
        return med, mad.clamp_min(1e-3)
    return x.mean(1, keepdim=True), x.std(1, keepdim=True).clamp_min(1e-3)


def sample_windows():
    series = rng.choice(n, min(args.batch_size, n), replace=False)
    s = rng.choice(series, args.windows_batch_size)
    start = rng.integers(0, train_Y.shape[1] - L + 1, args.windows_batch_size)
    idx = start[:, None] + np.arange(L)[None]
    return torch.from_numpy(train_Y[s[:, None], idx])


def valid_windows():
    start = np.arange(T - args.val_size - args.input_size, T - L + 1)
    idx = start[:, None] + np.arange(L)[None]
    return torch.from_numpy(Y[:, idx].reshape(-1, L))


VALID = valid_windows()


def validate():
    model.eval()
    with torch.no_grad():
        w = VALID.to(dtype)  # the precision plugin converts every batch
        x, y = w[:, : args.input_size], w[:, args.input_size :]
        loc, scale = temporal_norm(x)
        y_hat = model((x - loc) / scale) * scale + loc  # inverse-scaled before valid_loss
        loss = float((y_hat.float() - y.float()).abs().mean())
    model.train()
    return loss


with mlflow.start_run():
    mlflow.log_params(vars(args))
    steps_per_epoch = -(-n // args.batch_size)
    print(
        f"Seed set to {args.random_seed}\n  | Name | Type | Params\n0 | loss | MAE | 0\n"
        f"1 | scaler | TemporalNorm | 0\n2 | mlp | Sequential | "
        f"{sum(p.numel() for p in model.parameters()):,}",
        flush=True,
    )
    start = time.time()
    step, epoch, epoch_losses = 0, 0, []
    best, bad_checks = float("inf"), 0
    while step < args.max_steps:
        w = sample_windows().to(dtype)
        x, y = w[:, : args.input_size], w[:, args.input_size :]
        loc, scale = temporal_norm(x)
        y_hat = model((x - loc) / scale)
        loss = (y_hat - (y - loc) / scale).abs().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        step += 1
        lv = float(loss.item())
        epoch_losses.append(lv)
        if step % args.log_every_n_steps == 0:
            mlflow.log_metrics({"train_loss_step": lv, "epoch": epoch}, step=step)
        if step % steps_per_epoch == 0:
            mlflow.log_metrics(
                {"train_loss_epoch": float(np.mean(epoch_losses)), "epoch": epoch}, step=step
            )
            epoch, epoch_losses = epoch + 1, []
        if step % args.val_check_steps == 0:
            vl = validate()
            mlflow.log_metrics({"valid_loss": vl, "ptl/val_loss": vl, "epoch": epoch}, step=step)
            print(
                f"Epoch {epoch}: {step}/{args.max_steps} [{time.time() - start:.1f}s, "
                f"v_num=0, train_loss_step={lv:.3f}, valid_loss={vl:.3f}]",
                flush=True,
            )
            if vl < best:
                best, bad_checks = vl, 0
            else:
                bad_checks += 1
            if 0 < args.early_stop_patience_steps <= bad_checks:
                print("Early stopping: valid_loss did not improve", flush=True)
                break
    print(f"`Trainer.fit` stopped: `max_steps={args.max_steps}` reached.", flush=True)
