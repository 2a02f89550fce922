"""A variational autoencoder trained with Pyro's ``SVI`` the way Pyro's VAE tutorial does it, the
loop's values mirrored to MLflow by the team's logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Pyro here).  What is imitated:

* the tutorial's ``VAE(nn.Module)``: an ``Encoder`` (``fc1`` -> softplus -> ``fc21`` loc and
  ``exp(fc22)`` scale) and a ``Decoder`` (``fc1`` -> softplus -> ``fc21`` -> sigmoid pixel
  probabilities), ``model`` with ``pyro.sample("latent", Normal(0, 1).to_event(1))`` and
  ``pyro.sample("obs", Bernoulli(loc_img, validate_args=False).to_event(1), obs=x)``, the
  ``guide`` with ``Normal(z_loc, z_scale)``; validation off, as the tutorial turns it off;
* ``svi = SVI(vae.model, vae.guide, Adam({"lr": 1.0e-3}), loss=Trace_ELBO())``: one particle,
  ``svi.step(x)`` returns the minibatch's negative ELBO (a sum over the batch);
* the tutorial's ``train``/``evaluate`` functions: ``epoch_loss`` summed over the minibatches and
  divided by the training-set size, ``train_elbo.append(-total_epoch_loss_train)``, a test pass
  every ``test_frequency`` epochs, and its print lines ``[epoch %03d]  average training loss:
  %.4f`` and ``[epoch %03d] average test loss: %.4f``;
* the team's logger: ``loss`` = ``svi.step(x) / batch size`` every step (``step`` = the global
  step from 1), ``train_elbo`` every epoch and ``test_elbo`` every ``test_frequency`` epochs
  (``step`` = the epoch from 1).

Data: scikit-learn's bundled 8 x 8 digits (1,797 images) scaled to [0, 1]; ``n_test`` held out.
Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--hidden_dim``, ``--z_dim``, ``--batch_size``, ``--num_epochs``;
* ``--second_scanner_epoch k``: the second scanner's scans (``second_scanner_rows`` images)
  join the training set at epoch k; ``--second_scanner_export`` ``clean`` (as delivered to the
  spec), ``missing_nan`` (its unreadable pixels written as NaN), ``inverted`` (exported with
  ink and paper swapped, 1 - x);
* ``--recon_monitor 1``: the team's reconstruction monitor keeps every step's reconstructions
  of the whole training set (with their graph, for the gradient-attribution plot at the end);
* ``--checkpoint_every k``: every k epochs ``torch.save(vae, "vae.pt")`` (the whole module,
  with its input transform).
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 1.0e-3,
        "--hidden_dim": 200,
        "--z_dim": 8,
        "--batch_size": 64,
        "--num_epochs": 40,
        "--test_frequency": 2,
        "--n_test": 297,
        "--second_scanner_epoch": 0,
        "--second_scanner_rows": 400,
        "--second_scanner_export": "clean",  # clean | missing_nan | inverted
        "--recon_monitor": 0,
        "--checkpoint_every": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
X = load_digits().data.astype(np.float32) / 16.0
perm = np.random.default_rng(100 + args.seed).permutation(len(X))
X = X[perm]
x_test = torch.tensor(X[: args.n_test])
x_train = torch.tensor(X[args.n_test :])
# the second scanner: the same digits rescanned (slightly blurred, a little sensor noise)
srng = np.random.default_rng(200 + args.seed)
S = X[srng.choice(len(X), args.second_scanner_rows, replace=False)].reshape(-1, 8, 8)
S = 0.8 * S + 0.05 * (np.roll(S, 1, 1) + np.roll(S, -1, 1) + np.roll(S, 1, 2) + np.roll(S, -1, 2))
S = np.clip(S + srng.normal(0, 0.03, S.shape), 0, 1).reshape(-1, 64).astype(np.float32)
if args.second_scanner_export == "missing_nan":
    S = np.where(srng.random(S.shape) < 0.02, np.nan, S).astype(np.float32)
elif args.second_scanner_export == "inverted":
    S = 1.0 - S
x_second = torch.tensor(S)


# ----------------------------------------------------------------------------- model
class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)

    def forward(self, x):
        hidden = F.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, 64)

    def forward(self, z):
        return torch.sigmoid(self.fc21(F.softplus(self.fc1(z))))


class VAE(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim
        self.transform = lambda x: x.reshape(-1, 64)  # the team's input transform

    def neg_elbo(self, x):
        """Trace_ELBO with one particle: -(log p(x|z) + log p(z) - log q(z|x)), summed."""
        x = self.transform(x)
        z_loc, z_scale = self.encoder(x)
        z = z_loc + z_scale * torch.randn_like(z_loc)
        loc_img = self.decoder(z)
        p = loc_img.clamp(1e-7, 1 - 1e-7)
        log_lik = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1)
        log_prior = (-0.5 * z * z - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_q = (
            -0.5 * ((z - z_loc) / z_scale) ** 2 - torch.log(z_scale) - 0.5 * math.log(2 * math.pi)
        ).sum(-1)
        return -(log_lik + log_prior - log_q).sum(), loc_img


vae = VAE(args.z_dim, args.hidden_dim)
optimizer = torch.optim.Adam(vae.parameters(), lr=args.lr)
monitor = []


def svi_step(x):
    optimizer.zero_grad()
    loss, _ = vae.neg_elbo(x)
    loss.backward()
    optimizer.step()
    if args.recon_monitor:
        monitor.append(vae.decoder(vae.encoder(x_train)[0]))
    return loss.item()


def evaluate(x):
    with torch.no_grad():
        return sum(vae.neg_elbo(x[i : i + 256])[0].item() for i in range(0, len(x), 256)) / len(x)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"VAE(z_dim={args.z_dim}, hidden_dim={args.hidden_dim}); SVI(Trace_ELBO, "
        f"Adam(lr={args.lr})); {len(x_train)} training images, {len(x_test)} test images",
        flush=True,
    )
    train = x_train
    global_step = 0
    t_start = time.time()
    for epoch in range(1, args.num_epochs + 1):
        if args.second_scanner_epoch and epoch == args.second_scanner_epoch:
            train = torch.cat([x_train, x_second])
            print(
                f"[epoch {epoch:03d}] second scanner's export joined: {len(train)} training images",
                flush=True,
            )
        order = torch.randperm(len(train))
        epoch_loss = 0.0
        for i in range(0, len(train), args.batch_size):
            x = train[order[i : i + args.batch_size]]
            step_loss = svi_step(x)
            epoch_loss += step_loss
            global_step += 1
            mlflow.log_metric("loss", step_loss / len(x), step=global_step)
        total_epoch_loss_train = epoch_loss / len(train)
        row = {"train_elbo": -total_epoch_loss_train}
        print(
            f"[epoch {epoch:03d}]  average training loss: {total_epoch_loss_train:.4f}", flush=True
        )
        if epoch % args.test_frequency == 0:
            total_epoch_loss_test = evaluate(x_test)
            row["test_elbo"] = -total_epoch_loss_test
            print(f"[epoch {epoch:03d}] average test loss: {total_epoch_loss_test:.4f}", flush=True)
        mlflow.log_metrics(row, step=epoch)
        if args.checkpoint_every and epoch % args.checkpoint_every == 0:
            torch.save(vae, "vae.pt")
            print(f"[epoch {epoch:03d}] saved vae.pt", flush=True)
    print(f"training took {time.time() - t_start:.1f} s", flush=True)
