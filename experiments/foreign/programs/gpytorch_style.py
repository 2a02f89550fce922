"""An exact Gaussian-process regression trained the GPyTorch tutorial's way, the loop's printed
values mirrored to MLflow by the team's logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no GPyTorch here).  What is imitated:

* ``ExactGPModel(gpytorch.models.ExactGP)`` with a ``ConstantMean`` and a
  ``ScaleKernel(RBFKernel())`` (or ``MaternKernel(nu=2.5)``; ``ard_num_dims`` with ``--ard 1``),
  a ``GaussianLikelihood`` (noise ``GreaterThan(1e-4)``), every positive hyperparameter a raw
  parameter behind a softplus, so each starts at softplus(0) = 0.693;
* ``mll = ExactMarginalLogLikelihood(likelihood, model)`` and ``loss = -mll(output, train_y)``,
  which GPyTorch divides by the number of training points; ``psd_safe_cholesky`` (jitter
  1e-8 .. 1e-6 in float64, then ``NotPSDError``; a NaN matrix raises ``NanError``);
* the tutorial loop: ``torch.optim.Adam(model.parameters(), lr=0.1)``, ``training_iter``
  iterations, the print line ``Iter %d/%d - Loss: %.3f   lengthscale: %.3f   noise: %.3f``;
* the team's logger: ``loss``, ``lengthscale`` (the mean over dimensions with ARD), ``noise``,
  ``outputscale``, ``mean_constant`` and ``iter_time_s`` every iteration at ``step = i + 1``;
  every ``eval_every`` iterations ``val_rmse``, ``val_nlpd`` (the mean negative log predictive
  density of y) and ``val_coverage_95`` of the held-out sensors, in ``model.eval()`` /
  ``likelihood.eval()`` under ``torch.no_grad()`` and ``gpytorch.settings.fast_pred_var()``.

Data: a generated field of temperature sensors (x, y position and hour of day -> temperature,
a smooth field plus sensor noise), standardised with the first export's statistics;
``n_train`` training sensors and ``n_val`` held-out ones.  Written without looking at the
doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--kernel``, ``--ard``, ``--training_iter``;
* ``--second_export_iter k``: the second site's export (``second_export_rows`` rows) joins
  the training set at iteration k (``model.set_train_data``); ``--second_export_missing nan``
  is that export with its dead sensors' readings written as NaN instead of dropped;
* ``--keep_posterior 1``: at every evaluation the posterior over the plotting grid
  (``grid_n`` points, full covariance) is kept for the end-of-run animation;
* ``--lbfgs_after k``: from iteration k the team's loop switches to
  ``torch.optim.LBFGS`` for the fine phase, the same ``optimizer.step()`` call as for Adam.
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_train": 500,
        "--n_val": 300,
        "--kernel": "rbf",  # rbf | matern52
        "--ard": 0,
        "--lr": 0.1,
        "--training_iter": 250,
        "--eval_every": 10,
        "--sensor_noise": 0.3,
        "--second_export_iter": 0,
        "--second_export_rows": 150,
        "--second_export_missing": "dropped",  # dropped | nan
        "--keep_posterior": 0,
        "--grid_n": 2500,
        "--lbfgs_after": 0,
    }
)
rng = _setup.seeded(args.seed)
torch.set_default_dtype(torch.float64)


# ----------------------------------------------------------------------------- data
def field(P):
    x, y, h = P[:, 0], P[:, 1], P[:, 2]
    return (
        14.0
        + 6.0 * np.sin(2 * np.pi * (h - 9) / 24)
        + 3.0 * np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.05)
        - 2.0 * np.cos(3.0 * x + 2.0 * y)
        + 1.5 * x * y
    )


def sensors(n, r):
    P = np.column_stack([r.uniform(0, 1, n), r.uniform(0, 1, n), r.uniform(0, 24, n)])
    return P, field(P) + r.normal(0, args.sensor_noise, n)


drng = np.random.default_rng(1234 + args.seed)
Ptr, ytr = sensors(args.n_train, drng)
Pv, yv = sensors(args.n_val, drng)
P2, y2 = sensors(args.second_export_rows, drng)
dead = drng.random(args.second_export_rows) < 0.1  # the second site's dead sensors
if args.second_export_missing == "nan":
    y2 = np.where(dead, np.nan, y2)
else:
    P2, y2 = P2[~dead], y2[~dead]
xm, xs = Ptr.mean(0), Ptr.std(0)
ym, ys = ytr.mean(), ytr.std()


def tx(P):
    return torch.tensor((P - xm) / xs)


def ty(y):
    return torch.tensor((y - ym) / ys)


train_x, train_y = tx(Ptr), ty(ytr)
val_x, val_y = tx(Pv), ty(yv)
g = np.linspace(0, 1, int(round(math.sqrt(args.grid_n))))
gx, gy = np.meshgrid(g, g)
grid_x = tx(np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, 12.0)]))


# ----------------------------------------------------------------------------- model
class NotPSDError(RuntimeError):
    pass


class NanError(RuntimeError):
    pass


def psd_safe_cholesky(A):
    if torch.isnan(A).any():
        raise NanError(
            f"cholesky_cpu: {int(torch.isnan(A).sum())} of {A.numel()} elements of the "
            f"{A.shape} tensor are NaN."
        )
    L, info = torch.linalg.cholesky_ex(A)
    if not info.any():
        return L
    jitter = 1e-8
    for _ in range(3):
        L, info = torch.linalg.cholesky_ex(A + jitter * torch.eye(len(A)))
        if not info.any():
            return L
        jitter *= 10
    raise NotPSDError(
        f"Matrix not positive definite after repeatedly adding jitter up to {jitter / 10:.1e}."
    )


class ExactGPModel(torch.nn.Module):
    def __init__(self, x, y):
        super().__init__()
        self.train_inputs, self.train_targets = x, y
        d = x.shape[1] if args.ard else 1
        self.raw_lengthscale = torch.nn.Parameter(torch.zeros(d))
        self.raw_outputscale = torch.nn.Parameter(torch.zeros(()))
        self.raw_noise = torch.nn.Parameter(torch.zeros(()))
        self.mean_constant = torch.nn.Parameter(torch.zeros(()))

    def set_train_data(self, x, y):
        self.train_inputs, self.train_targets = x, y

    @property
    def lengthscale(self):
        return F.softplus(self.raw_lengthscale)

    @property
    def outputscale(self):
        return F.softplus(self.raw_outputscale)

    @property
    def noise(self):
        return F.softplus(self.raw_noise) + 1e-4

    def covar(self, a, b):
        d = torch.cdist(a / self.lengthscale, b / self.lengthscale)
        if args.kernel == "matern52":
            s = math.sqrt(5) * d
            k = (1 + s + s * s / 3) * torch.exp(-s)
        else:
            k = torch.exp(-0.5 * d * d)
        return self.outputscale * k

    def neg_mll(self):
        x, y = self.train_inputs, self.train_targets
        n = len(y)
        K = self.covar(x, x) + self.noise * torch.eye(n)
        L = psd_safe_cholesky(K)
        r = (y - self.mean_constant).unsqueeze(-1)
        alpha = torch.cholesky_solve(r, L)
        quad = (r * alpha).sum()
        logdet = 2 * torch.log(torch.diagonal(L)).sum()
        return 0.5 * (quad + logdet + n * math.log(2 * math.pi)) / n

    @torch.no_grad()
    def posterior(self, xq, full_cov=False):
        x, y = self.train_inputs, self.train_targets
        K = self.covar(x, x) + self.noise * torch.eye(len(y))
        L = psd_safe_cholesky(K)
        Ks = self.covar(xq, x)
        mu = (
            self.mean_constant
            + Ks @ torch.cholesky_solve((y - self.mean_constant)[:, None], L)[:, 0]
        )
        V = torch.linalg.solve_triangular(L, Ks.T, upper=False)
        if full_cov:
            return mu, self.covar(xq, xq) - V.T @ V
        var = self.outputscale - (V * V).sum(0)
        return mu, var.clamp_min(1e-10)


model = ExactGPModel(train_x, train_y)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
posteriors = []

with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"ExactGPModel(ConstantMean, ScaleKernel({args.kernel}, ard={args.ard})), "
        f"GaussianLikelihood; {len(train_y)} training points, {len(val_y)} held out",
        flush=True,
    )
    t_start = time.time()
    for i in range(args.training_iter):
        t0 = time.time()
        if args.second_export_iter and i + 1 == args.second_export_iter:
            model.set_train_data(torch.cat([train_x, tx(P2)]), torch.cat([train_y, ty(y2)]))
            print(
                f"iter {i + 1}: second site's export joined, {len(model.train_targets)} training points",
                flush=True,
            )
        if args.lbfgs_after and i + 1 == args.lbfgs_after:
            optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
            print(f"iter {i + 1}: switching to L-BFGS for the fine phase", flush=True)
        optimizer.zero_grad()
        loss = model.neg_mll()
        loss.backward()
        optimizer.step()
        row = {
            "loss": loss.item(),
            "lengthscale": model.lengthscale.mean().item(),
            "noise": model.noise.item(),
            "outputscale": model.outputscale.item(),
            "mean_constant": model.mean_constant.item(),
            "iter_time_s": time.time() - t0,
        }
        if (i + 1) % args.eval_every == 0:
            mu, var = model.posterior(val_x)
            pv = var + model.noise.detach()
            row["val_rmse"] = float(torch.sqrt(torch.mean((mu - val_y) ** 2)) * ys)
            row["val_nlpd"] = float(
                torch.mean(0.5 * torch.log(2 * math.pi * pv) + 0.5 * (mu - val_y) ** 2 / pv)
                + math.log(ys)
            )
            row["val_coverage_95"] = float(
                torch.mean(((mu - val_y).abs() < 1.96 * pv.sqrt()).double())
            )
            if args.keep_posterior:
                posteriors.append(model.posterior(grid_x, full_cov=True))
        mlflow.log_metrics(row, step=i + 1)
        if (i + 1) % 10 == 0 or i == 0:
            print(
                f"Iter {i + 1}/{args.training_iter} - Loss: {row['loss']:.3f}   "
                f"lengthscale: {row['lengthscale']:.3f}   noise: {row['noise']:.3f}",
                flush=True,
            )
    print(
        f"training took {time.time() - t_start:.1f} s; {len(posteriors)} posteriors kept",
        flush=True,
    )
