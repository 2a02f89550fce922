"""A single-cell VAE trained as scvi-tools' ``scvi.model.SCVI(adata).train(...)`` trains one,
the Lightning trainer given the team's ``MLFlowLogger`` (``logger=`` passed through to
``scvi.train.Trainer``).

Plain PyTorch + numpy + the plain ``mlflow`` API (no scvi-tools, no Lightning, no AnnData
here).  What is imitated:

* ``scvi.module.VAE`` with its defaults: the encoder on ``log1p`` counts, ``n_hidden`` units in
  ``n_layers`` ``FCLayers`` (BatchNorm, ReLU, ``dropout_rate``), ``n_latent`` latent dimensions
  (``var_eps`` 1e-4), the observed library size (``use_observed_lib_size=True``: ``library =
  log(x.sum(1))``), the decoder conditioned on the one-hot ``batch`` (``softmax`` scale,
  ``px_rate = exp(library) * px_scale``), a per-gene dispersion (``dispersion="gene"``), the
  ``gene_likelihood="nb"`` log-likelihood as ``log_nb_positive`` computes it;
* ``TrainingPlan``: ``loss = mean(reconstruction_loss + kl_weight * kl_local)``, ``kl_weight =
  min(1, epoch / n_epochs_kl_warmup)`` (default 400 epochs), Adam with ``eps=0.01`` and
  ``weight_decay=1e-6``; the ``DataSplitter``'s random ``train_size`` split, minibatches of
  ``batch_size`` 128, validation every ``check_val_every_n_epoch`` epochs, ``early_stopping`` on
  ``elbo_validation`` (patience 45); ``reduce_lr_on_plateau`` (``ReduceLROnPlateau`` on
  ``elbo_validation``, ``lr_patience``, ``lr_factor``, ``lr_threshold`` (``abs`` mode); scvi-tools logs
  no learning rate);
* what reaches MLflow through Lightning's ``MLFlowLogger``: the step-level ``kl_weight`` and
  ``train_loss_step`` every ``log_every_n_steps`` (50) batches; at each epoch's end
  ``train_loss_epoch`` and the ``ElboMetric`` values ``elbo_train``, ``reconstruction_loss_train``,
  ``kl_local_train``, ``kl_global_train`` (per-cell means over the epoch; the ELBO without the KL
  weight); after each validation ``validation_loss``, ``elbo_validation``,
  ``reconstruction_loss_validation``, ``kl_local_validation``, ``kl_global_validation``; Lightning
  adds ``epoch`` to every call; ``step = global_step`` (batches that stepped).

Data: a generated 10x-like count matrix (``n_cells`` cells, 500 highly variable genes, 8 cell
types on a shared gene-program basis, two samples with a sample effect, negative-binomial counts
with library sizes log-normal around ``depth`` UMIs).  The team's loader builds ``adata.X`` from
the samples' matrices (``--x_dtype``: the dtype ``adata.X`` is stored in; ``--sample2_genes``:
how many of the 500 genes the second sample's matrix has, the two joined as
``anndata.concat(join="outer")`` joins dense matrices, with NaN where a sample lacks a gene).
Written without looking at the doctor.

Faults are real settings and data: ``--n_cells`` with ``--n_hidden``, ``--n_layers``,
``--n_latent``, ``--dropout_rate``; ``--x_dtype`` with ``--depth``; ``--sample2_genes``;
``--reduce_lr_on_plateau`` with ``--lr_patience``, ``--lr_factor`` and ``--lr_threshold``.
"""

import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_cells": 2400,
        "--depth": 3000.0,
        "--x_dtype": "float32",
        "--sample2_genes": 500,
        "--n_hidden": 128,
        "--n_latent": 10,
        "--n_layers": 1,
        "--dropout_rate": 0.1,
        "--max_epochs": 120,
        "--lr": 1e-3,
        "--batch_size": 128,
        "--train_size": 0.9,
        "--n_epochs_kl_warmup": 400,
        "--check_val_every_n_epoch": 1,
        "--early_stopping": 1,
        "--early_stopping_patience": 45,
        "--reduce_lr_on_plateau": 0,
        "--lr_patience": 30,
        "--lr_factor": 0.6,
        "--lr_threshold": 0.0,
        "--log_every_n_steps": 50,
    }
)
rng = _setup.seeded(args.seed)
N_GENES, N_TYPES, N_PROGRAMS = 500, 8, 12

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(11)  # the same biology for every run
programs = drng.gamma(0.3, 1.0, (N_PROGRAMS, N_GENES))
type_usage = drng.dirichlet(np.full(N_PROGRAMS, 0.3), N_TYPES)
base = type_usage @ programs + 0.02
sample_effect = np.exp(drng.normal(0, 0.25, (2, N_GENES)))
theta_true = drng.gamma(2.0, 2.0, N_GENES)
crng = np.random.default_rng(1000 + args.n_cells)  # the cohort
cell_type = crng.integers(0, N_TYPES, args.n_cells)
sample = (crng.uniform(size=args.n_cells) < 0.45).astype(int)
lib = np.exp(crng.normal(np.log(args.depth), 0.45, args.n_cells))
state = np.exp(crng.normal(0, 0.2, (args.n_cells, N_GENES)))
p = base[cell_type] * sample_effect[sample] * state
p /= p.sum(1, keepdims=True)
mu = lib[:, None] * p
counts = crng.poisson(crng.gamma(theta_true, mu / theta_true)).astype(np.float64)
# the loader: two samples' matrices joined as anndata.concat(join="outer") joins dense ones
X = counts.copy()
missing = np.arange(args.sample2_genes, N_GENES)
if len(missing):
    X[np.ix_(sample == 1, missing)] = np.nan
X = X.astype(args.x_dtype)
print(
    f"AnnData object with n_obs x n_vars = {args.n_cells} x {N_GENES}; X dtype {X.dtype}; "
    f"total counts median {np.median(counts.sum(1)):.0f}, max {counts.sum(1).max():.0f}",
    flush=True,
)

perm = rng.permutation(args.n_cells)  # DataSplitter
n_train = int(np.ceil(args.train_size * args.n_cells))
train_idx, val_idx = perm[:n_train], perm[n_train:]
X_t = torch.from_numpy(X)
batch_t = torch.from_numpy(sample)


# ----------------------------------------------------------------------------- model
def fc(n_in, n_out):
    layers, d = [], n_in
    for _ in range(args.n_layers):
        layers += [
            torch.nn.Linear(d, n_out),
            torch.nn.BatchNorm1d(n_out, momentum=0.01, eps=0.001),
            torch.nn.ReLU(),
            torch.nn.Dropout(args.dropout_rate),
        ]
        d = n_out
    return torch.nn.Sequential(*layers)


class VAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = fc(N_GENES, args.n_hidden)
        self.z_mean = torch.nn.Linear(args.n_hidden, args.n_latent)
        self.z_var = torch.nn.Linear(args.n_hidden, args.n_latent)
        self.decoder = fc(args.n_latent + 2, args.n_hidden)
        self.px_scale = torch.nn.Linear(args.n_hidden, N_GENES)
        self.px_r = torch.nn.Parameter(torch.randn(N_GENES))

    def forward(self, x, b):
        library = torch.log(x.sum(1, keepdim=True))  # use_observed_lib_size
        x = x.float()
        library = library.float()
        q = self.encoder(torch.log1p(x))
        qm, qv = self.z_mean(q), torch.exp(self.z_var(q)) + 1e-4
        z = qm + qv.sqrt() * torch.randn_like(qm)
        h = self.decoder(torch.cat([z, torch.nn.functional.one_hot(b, 2).float()], 1))
        px_rate = torch.exp(library) * torch.softmax(self.px_scale(h), -1)
        theta = torch.exp(self.px_r)
        eps = 1e-8
        log_theta_mu_eps = torch.log(theta + px_rate + eps)
        log_nb = (
            theta * (torch.log(theta + eps) - log_theta_mu_eps)
            + x * (torch.log(px_rate + eps) - log_theta_mu_eps)
            + torch.lgamma(x + theta)
            - torch.lgamma(theta)
            - torch.lgamma(x + 1)
        )
        reconst = -log_nb.sum(-1)
        kl_local = 0.5 * (qv + qm**2 - 1 - torch.log(qv)).sum(-1)
        return reconst, kl_local


module = VAE()
optim = torch.optim.Adam(module.parameters(), lr=args.lr, eps=0.01, weight_decay=1e-6)
# TrainingPlan.configure_optimizers with reduce_lr_on_plateau: monitor elbo_validation,
# lr_threshold in threshold_mode "abs", min_lr 0, verbose
sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
    optim,
    patience=args.lr_patience,
    factor=args.lr_factor,
    threshold=args.lr_threshold,
    threshold_mode="abs",
)


def batches(idx, shuffle):
    order = rng.permutation(idx) if shuffle else idx
    for s in range(0, len(order), args.batch_size):
        j = torch.from_numpy(order[s : s + args.batch_size])
        yield X_t[j], batch_t[j]


def split_metrics(loss_name, split, sums, n):
    """scvi-tools' per-split epoch metrics from (loss, reconstruction, kl_local) sums over n cells."""
    return {
        loss_name: sums[0] / n,
        f"elbo_{split}": (sums[1] + sums[2]) / n,
        f"reconstruction_loss_{split}": sums[1] / n,
        f"kl_local_{split}": sums[2] / n,
        f"kl_global_{split}": 0.0,
    }


with mlflow.start_run():
    mlflow.log_params(vars(args))
    start = time.time()
    global_step, best, wait = 0, np.inf, 0
    for epoch in range(args.max_epochs):
        kl_weight = min(1.0, epoch / args.n_epochs_kl_warmup)
        module.train()
        sums = np.zeros(3)  # loss * n, reconstruction, kl_local
        n_obs = 0
        for x, b in batches(train_idx, True):
            reconst, kl_local = module(x, b)
            loss = torch.mean(reconst + kl_weight * kl_local)
            optim.zero_grad()
            loss.backward()
            optim.step()
            n = len(x)
            sums += [loss.item() * n, reconst.sum().item(), kl_local.sum().item()]
            n_obs += n
            if (global_step + 1) % args.log_every_n_steps == 0:
                mlflow.log_metrics(
                    {"kl_weight": kl_weight, "train_loss_step": loss.item(), "epoch": epoch},
                    step=global_step,
                )
            global_step += 1
        logs = {}
        if args.train_size < 1 and (epoch + 1) % args.check_val_every_n_epoch == 0:
            module.eval()
            vs, vn = np.zeros(3), 0
            with torch.no_grad():
                for x, b in batches(val_idx, False):
                    reconst, kl_local = module(x, b)
                    loss = torch.mean(reconst + kl_weight * kl_local)
                    vs += [loss.item() * len(x), reconst.sum().item(), kl_local.sum().item()]
                    vn += len(x)
            logs.update(split_metrics("validation_loss", "validation", vs, vn))
        logs.update(split_metrics("train_loss_epoch", "train", sums, n_obs), epoch=epoch)
        mlflow.log_metrics(logs, step=global_step - 1)
        print(
            f"Epoch {epoch + 1}/{args.max_epochs}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "epoch"),
            flush=True,
        )
        if args.reduce_lr_on_plateau and "elbo_validation" in logs:
            before = optim.param_groups[0]["lr"]
            sched.step(logs["elbo_validation"])
            if optim.param_groups[0]["lr"] < before:
                print(
                    f"Epoch {epoch:05d}: reducing learning rate of group 0 to "
                    f"{optim.param_groups[0]['lr']:.4e}.",
                    flush=True,
                )
        if args.early_stopping and "elbo_validation" in logs:
            v = logs["elbo_validation"]
            if v < best:  # min_delta 0, mode min
                best, wait = v, 0
            else:
                wait += 1
                if wait >= args.early_stopping_patience:
                    print(
                        f"Monitored metric elbo_validation did not improve in the last "
                        f"{wait} records. Best score: {best:.3f}. Signaling Trainer to stop.",
                        flush=True,
                    )
                    break
    print(f"`Trainer.fit` stopped after {time.time() - start:.1f} s", flush=True)
