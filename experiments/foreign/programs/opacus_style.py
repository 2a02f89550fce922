"""Opacus DP-SGD training as the Opacus tutorials write it (``PrivacyEngine.make_private`` with
Poisson sampling, an RDP accountant, the per-epoch ``(ε = ..., δ = ...)`` line), re-implemented
in plain PyTorch and mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no opacus import here).  What is imitated:

* ``GradSampleModule``: per-sample gradients (here ``torch.func.vmap`` of ``grad`` over the
  batch), stored as ``p.grad_sample``;
* ``DPOptimizer``: every per-sample gradient clipped to ``max_grad_norm`` (flat clipping over
  all parameters), summed, Gaussian noise of std ``noise_multiplier * max_grad_norm`` added,
  divided by the expected batch size, then the wrapped SGD step (``lr``, momentum 0.9);
* ``DPDataLoader``: Poisson sampling, every example joins a batch with probability
  ``sample_rate = batch_size / N`` (batches of varying size, possibly empty);
* ``RDPAccountant``: the sampled Gaussian mechanism's RDP at integer orders 2-64 (the
  binomial expansion Opacus uses for integer alpha) times the number of steps, converted to
  ``epsilon`` at ``delta`` with Opacus' ``get_privacy_spent`` formula;
* the tutorial's loop: per step ``loss`` and ``acc`` (the batch's), ``epsilon`` (from the
  accountant after the step), ``delta``, ``noise_multiplier``, ``max_grad_norm``, at step = the
  global step from 1 (written an epoch at a time by the team's mirror); per epoch ``test_loss``, ``test_acc``, ``train_loss`` (the epoch's mean)
  at step = epoch from 1, and the line ``Train Epoch: 3  Loss: 0.512  Acc@1: 84.3  (ε = 1.21,
  δ = 1e-05)``.

Data: scikit-learn's 8 x 8 digits, 1,400 training / 397 test images; a tanh MLP.  Written
without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--epochs``, ``--hidden``, ``--noise_multiplier``,
  ``--max_grad_norm``, ``--delta``;
* ``--extra_shard_epoch k``: a second clinic's shard of 900 re-scanned digits joins the
  training set at epoch k (the sample rate keeps the expected batch size);
  ``--extra_shard_label_base`` the first class id in that clinic's label column (the project
  counts from 0; the loader takes the column as it is);
* ``--checkpoint_every k``: every k epochs the team saves a checkpoint dict whose fields are
  ``--checkpoint_keys`` (read from the run's state by name);
* ``--gns_probe 1``: the team's gradient-noise-scale probe keeps every step's per-sample
  gradients for an end-of-run estimate.
"""

import functools
import math
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 0.05,
        "--batch_size": 64,
        "--epochs": 12,
        "--hidden": 128,
        "--noise_multiplier": 1.0,
        "--max_grad_norm": 1.0,
        "--delta": 1e-5,
        "--extra_shard_epoch": 0,
        "--extra_shard_label_base": 0,
        "--checkpoint_every": 0,
        "--checkpoint_keys": "model,optimizer,accountant",
        "--gns_probe": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
d = load_digits()
X = (d.data / 16.0).astype(np.float32)
y = d.target.astype(np.int64)
perm = np.random.default_rng(77).permutation(len(X))
tr, te = perm[:1400], perm[1400:]
mean, std = X[tr].mean(0), X[tr].std(0) + 0.1
Xtr, ytr = torch.tensor((X[tr] - mean) / std), torch.tensor(y[tr])
Xte, yte = torch.tensor((X[te] - mean) / std), torch.tensor(y[te])


def clinic_shard():
    g = np.random.default_rng(4000 + args.seed)
    ix = g.choice(tr, 900, replace=False)
    x = np.clip(X[ix] + g.normal(0, 0.03, (900, 64)).astype(np.float32), 0, 1)
    labels = y[ix] + args.extra_shard_label_base  # the clinic's label column, taken as is
    return torch.tensor((x - mean) / std), torch.tensor(labels % 10)


# ----------------------------------------------------------------------------- model
model = nn.Sequential(nn.Linear(64, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 10))
params = {k: v.detach() for k, v in model.named_parameters()}
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)


def loss_one(p, x, t):
    out = functional_call(model, p, (x[None],))
    return F.cross_entropy(out, t[None])


per_sample_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))


# ----------------------------------------------------------------------------- accountant
ORDERS = list(range(2, 65))


@functools.cache
def rdp_sampled_gaussian(q, sigma, alpha):
    """log A_alpha for integer alpha (Mironov et al. 2019, Opacus' _compute_log_a_int)."""
    terms = []
    for i in range(alpha + 1):
        log_coef = math.lgamma(alpha + 1) - math.lgamma(i + 1) - math.lgamma(alpha - i + 1)
        terms.append(
            log_coef
            + i * math.log(q)
            + (alpha - i) * math.log(1 - q)
            + (i * i - i) / (2 * sigma**2)
        )
    m = max(terms)
    log_a = m + math.log(sum(math.exp(t - m) for t in terms))
    return log_a / (alpha - 1)


class RDPAccountant:
    def __init__(self):
        self.history = []  # (noise_multiplier, sample_rate, steps)

    def step(self, sigma, q):
        if self.history and self.history[-1][:2] == (sigma, q):
            self.history[-1] = (sigma, q, self.history[-1][2] + 1)
        else:
            self.history.append((sigma, q, 1))

    def get_epsilon(self, delta):
        best = float("inf")
        for a in ORDERS:
            rdp = sum(n * rdp_sampled_gaussian(q, s, a) for s, q, n in self.history)
            eps = rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
            best = min(best, eps)
        return best


accountant = RDPAccountant()
gns_store = []
ckpt_dir = tempfile.mkdtemp(prefix="dp-ckpt-")


@torch.no_grad()
def test():
    out = model(Xte)
    return F.cross_entropy(out, yte).item(), (out.argmax(1) == yte).float().mean().item()


with mlflow.start_run() as active:
    run_id, client, pending = active.info.run_id, MlflowClient(), []
    mlflow.log_params(vars(args))
    Xd, yd = Xtr, ytr
    N = len(Xd)
    sample_rate = args.batch_size / N
    steps_per_epoch = int(1 / sample_rate)
    print(
        f"Using sigma={args.noise_multiplier} and C={args.max_grad_norm}, sample_rate={sample_rate:.4f}",
        flush=True,
    )
    step = 0
    for epoch in range(1, args.epochs + 1):
        if args.extra_shard_epoch and epoch == args.extra_shard_epoch:
            xs, ys = clinic_shard()
            Xd, yd = torch.cat([Xtr, xs]), torch.cat([ytr, ys])
            N = len(Xd)
            sample_rate = args.batch_size / N
            steps_per_epoch = int(1 / sample_rate)
            print(f"epoch {epoch}: clinic shard joined, {N} training examples", flush=True)
        losses, accs = [], []
        for _ in range(steps_per_epoch):
            mask = torch.from_numpy(rng.random(N) < sample_rate)  # Poisson sampling
            xb, yb = Xd[mask], yd[mask]
            step += 1
            params = {k: v.detach() for k, v in model.named_parameters()}
            if len(xb):
                gs = per_sample_grad(params, xb, yb)
                with torch.no_grad():
                    out = model(xb)
                    loss = F.cross_entropy(out, yb).item()
                    acc = (out.argmax(1) == yb).float().mean().item()
            else:
                gs = {k: torch.zeros((0, *v.shape)) for k, v in params.items()}
                loss, acc = float("nan"), float("nan")
            for k, p in model.named_parameters():
                p.grad_sample = gs[k]
            if args.gns_probe:
                gns_store.append({k: g.clone() for k, g in gs.items()})
            # DPOptimizer.pre_step: clip per sample, sum, add noise, scale by expected batch
            norms = torch.sqrt(sum(g.reshape(len(xb), -1).pow(2).sum(1) for g in gs.values()))
            factor = (args.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            for p in model.parameters():
                g = torch.einsum("i,i...->...", factor, p.grad_sample)
                noise = torch.normal(0, args.noise_multiplier * args.max_grad_norm, g.shape)
                p.grad = (g + noise) / (sample_rate * N)
                p.grad_sample = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            accountant.step(args.noise_multiplier, sample_rate)
            eps = accountant.get_epsilon(args.delta)
            if len(xb):
                losses.append(loss)
                accs.append(acc)
                ts = int(time.time() * 1000)
                vals = {
                    "loss": loss,
                    "acc": acc,
                    "epsilon": eps,
                    "delta": args.delta,
                    "noise_multiplier": args.noise_multiplier,
                    "max_grad_norm": args.max_grad_norm,
                }
                pending += [Metric(k, v, ts, step) for k, v in vals.items()]
        client.log_batch(run_id, metrics=pending)  # the team's mirror: the epoch's step rows
        pending = []
        tl, ta = test()
        print(
            f"Train Epoch: {epoch} \tLoss: {np.mean(losses):.6f} Acc@1: {np.mean(accs) * 100:.3f} "
            f"(ε = {eps:.2f}, δ = {args.delta})  Test set: loss {tl:.4f}, acc {ta * 100:.2f}%",
            flush=True,
        )
        mlflow.log_metrics(
            {"test_loss": tl, "test_acc": ta, "train_loss": float(np.mean(losses))}, step=epoch
        )
        if args.checkpoint_every and epoch % args.checkpoint_every == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "accountant": accountant.history,
                "epoch": epoch,
            }
            ckpt = {k: state[k] for k in args.checkpoint_keys.split(",")}
            torch.save(ckpt, os.path.join(ckpt_dir, f"checkpoint_{epoch}.pt"))
            print(f"saved checkpoint_{epoch}.pt", flush=True)
