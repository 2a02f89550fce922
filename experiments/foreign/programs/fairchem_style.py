"""A SchNet-style interatomic potential (energies and forces, S2EF) trained as fairchem's
(Open Catalyst Project's) ``OCPTrainer`` trains one, its logger's scalars mirrored to MLflow
name for name.

Plain PyTorch + numpy + the plain ``mlflow`` API (no fairchem, no W&B here).  What is
imitated, as ``ocp_trainer.train`` and ``BaseTrainer.validate`` log it:

* every optimizer step: ``log_dict = {k: self.metrics[k]["metric"] ...}`` (the evaluator's
  running means since the last print: ``energy_mae``, ``forces_mae``, ``forces_cosine``,
  ``energy_forces_within_threshold``, ``loss``) updated with ``lr``, ``epoch`` (fractional,
  ``epoch_int + (i + 1) / len(train_loader)``) and ``step``, and ``logger.log(log_dict,
  step=self.step, split="train")``, which prefixes ``train/``; ``self.step`` counts from 1;
  the running means restart after every ``print_every`` steps, when the line
  ``energy_mae: 1.23e-01, forces_mae: ..., lr: ..., epoch: ..., step: ...`` is printed;
* every ``eval_every`` steps: ``validate("val")`` with the EMA weights, logging
  ``val/energy_mae``, ``val/forces_mae``, ``val/forces_cosine``,
  ``val/energy_forces_within_threshold``, ``val/loss`` and ``val/epoch`` at the same step;
  the best checkpoint by the ``primary_metric`` (``forces_mae``);
* the trainer's defaults: AdamW (``optimizer_params``), ``lr_initial``, ``warmup_steps`` with
  ``warmup_factor`` 0.2 then ``lr_milestones`` x ``lr_gamma``, ``clip_grad_norm`` 10,
  ``ema_decay`` (0.98 for these short runs), energy and force targets normalised
  (``normalize_labels``, mean/std of the energies, std of the forces), loss
  ``energy_coefficient`` x MAE(energy) + ``force_coefficient`` x L2MAE(forces), forces as
  the negative gradient of the energy (``regress_forces``, not direct).

Data: generated structures (8 atoms in a box, positions jittered) with energies and forces
from a Lennard-Jones potential plus a three-body term standing in for DFT labels, written
as the S2EF splits ``train`` / ``val`` (.npz).  The team's loader reads each split's records
in ``num_workers`` prefetch threads.  Written without looking at the doctor.

Faults are real code paths and data: ``--train_src s2ef_train_v2``: the v2 export keeps the
frames whose DFT did not converge, with energy and forces NaN; ``--val_src
s2ef_val_merged``: a merge of two val exports in which one record lost its ``forces`` array,
read in a prefetch thread that dies on it while the trainer waits for its batch;
``--eval_batch_size`` large with the team's graph builder, which expands every atom pair of
the whole batch before masking the pairs across structures.
"""

import math
import os
import queue
import tempfile
import threading
import time

import _setup
import mlflow
import numpy as np
import torch
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--train_src": "s2ef_train",
        "--val_src": "s2ef_val_id",
        "--train_size": 640,
        "--val_size": 200,
        "--batch_size": 16,
        "--eval_batch_size": 32,
        "--max_epochs": 8,
        "--eval_every": 40,
        "--print_every": 10,
        "--lr_initial": 1e-3,
        "--weight_decay": 0.0,
        "--warmup_steps": 50,
        "--warmup_factor": 0.2,
        "--lr_gamma": 0.1,
        "--lr_milestones": "240,290",
        "--clip_grad_norm": 10.0,
        "--ema_decay": 0.98,
        "--energy_coefficient": 1.0,
        "--force_coefficient": 2.0,
        "--hidden_channels": 32,
        "--num_filters": 32,
        "--num_interactions": 2,
        "--num_gaussians": 24,
        "--cutoff": 3.0,
        "--num_workers": 1,
    }
)
rng = _setup.seeded(args.seed)
N_ATOMS = 8

# ----------------------------------------------------------------------------- data
data_rng = np.random.default_rng(1234)  # the dataset is fixed; the seed moves the split


def make_frames(n):
    kept, iu = [], np.triu_indices(N_ATOMS, 1)
    while sum(len(k) for k in kept) < n:  # random packings without overlapping atoms
        p = data_rng.uniform(0, 2.1, (20000, N_ATOMS, 3))
        d = np.linalg.norm(p[:, :, None] - p[:, None], axis=-1)[:, iu[0], iu[1]]
        kept.append(p[d.min(1) > 0.92])
    pos = np.concatenate(kept)[:n]
    t = torch.tensor(pos, requires_grad=True)
    diff = t[:, :, None] - t[:, None]
    r = (diff.pow(2).sum(-1) + torch.eye(N_ATOMS)).sqrt()
    mask = 1 - torch.eye(N_ATOMS)
    lj = 4 * ((1 / r) ** 12 - (1 / r) ** 6) * mask
    e = 0.5 * lj.sum((1, 2))
    # a three-body term: pairs sharing an atom, penalising bond angles far from 90 degrees
    f = torch.exp(-((r - 1.1) ** 2) / 0.1) * mask
    cos = (diff[:, :, :, None] * diff[:, :, None]).sum(-1) / (r[:, :, :, None] * r[:, :, None])
    three = (f[:, :, :, None] * f[:, :, None] * cos**2).sum((1, 2, 3)) * 0.5
    e = e + three
    (forces,) = torch.autograd.grad(-e.sum(), t)
    return pos.astype(np.float32), e.detach().numpy(), forces.numpy().astype(np.float32)


data_dir = os.path.join(tempfile.mkdtemp(prefix="fairchem-"), "s2ef")
os.makedirs(data_dir)
pos, energy, forces = make_frames(1400)
np.savez(os.path.join(data_dir, "all.npz"), pos=pos, y=energy, force=forces)
split_rng = np.random.default_rng(args.seed)
order = split_rng.permutation(1000)
val_ids = 1000 + np.arange(400)[: args.val_size]  # the val split is fixed
train_ids = order[: args.train_size]


def load_split(name, ids):
    z = np.load(os.path.join(data_dir, "all.npz"))
    recs = [{"pos": z["pos"][i], "y": float(z["y"][i]), "force": z["force"][i]} for i in ids]
    if name == "s2ef_train_v2":  # the v2 export keeps the unconverged DFT frames
        for k in range(len(recs) // 3, len(recs), 317):
            recs[k]["y"] = float("nan")
            recs[k]["force"] = np.full_like(recs[k]["force"], np.nan)
    if name == "s2ef_val_merged":  # the id and ood val exports merged; one lost its forces
        del recs[len(recs) * 2 // 3]["force"]
    print(f"Loaded {len(recs)} records from {name}", flush=True)
    return recs


train_recs = load_split(args.train_src, train_ids)
val_recs = load_split(args.val_src, val_ids)
e_train = np.array([r["y"] for r in train_recs])
target_mean, target_std = float(np.nanmean(e_train)), float(np.nanstd(e_train))
grad_target_std = float(np.nanstd(np.stack([r["force"] for r in train_recs if "force" in r])))
print(
    f"normalizer: target_mean {target_mean:.4f} target_std {target_std:.4f} "
    f"grad_target_std {grad_target_std:.4f}",
    flush=True,
)


def collate(recs):
    return {
        "pos": torch.tensor(np.stack([r["pos"] for r in recs])),
        "energy": torch.tensor([r["y"] for r in recs], dtype=torch.float32),
        "forces": torch.tensor(np.stack([r["force"] for r in recs])),
    }


class PrefetchLoader:
    """The team's loader: ``num_workers`` threads collate the epoch's batches, in order."""

    def __init__(self, recs, batch_size, shuffle, num_workers):
        self.recs, self.bs, self.shuffle, self.nw = recs, batch_size, shuffle, num_workers

    def __len__(self):
        return math.ceil(len(self.recs) / self.bs)

    def _batches(self):
        idx = rng.permutation(len(self.recs)) if self.shuffle else np.arange(len(self.recs))
        return [idx[s : s + self.bs] for s in range(0, len(idx), self.bs)]

    def __iter__(self):
        batches = self._batches()
        if self.nw == 0:
            for b in batches:
                yield collate([self.recs[i] for i in b])
            return
        slots = [queue.Queue(maxsize=1) for _ in batches]

        def work(k):
            for j in range(k, len(batches), self.nw):
                slots[j].put(collate([self.recs[i] for i in batches[j]]))

        for k in range(self.nw):
            threading.Thread(target=work, args=(k,), daemon=True).start()
        for j in range(len(batches)):
            yield slots[j].get()  # in order, as the sampler made them


train_loader = PrefetchLoader(train_recs, args.batch_size, True, args.num_workers)
val_loader = PrefetchLoader(val_recs, args.eval_batch_size, False, args.num_workers)


# ----------------------------------------------------------------------------- model
class GaussianSmearing(nn.Module):
    def __init__(self, stop, n):
        super().__init__()
        self.register_buffer("offset", torch.linspace(0.0, stop, n))
        self.coeff = -0.5 / (self.offset[1] - self.offset[0]).item() ** 2

    def forward(self, d):
        return torch.exp(self.coeff * (d.unsqueeze(-1) - self.offset) ** 2)


class SchNet(nn.Module):
    def __init__(self):
        super().__init__()
        h, nf, ng = args.hidden_channels, args.num_filters, args.num_gaussians
        self.embedding = nn.Embedding(100, h)
        self.distance_expansion = GaussianSmearing(args.cutoff, ng)
        self.filters = nn.ModuleList(
            nn.Sequential(nn.Linear(ng, nf), nn.Softplus(), nn.Linear(nf, nf))
            for _ in range(args.num_interactions)
        )
        self.lin1 = nn.ModuleList(nn.Linear(h, nf) for _ in range(args.num_interactions))
        self.lin2 = nn.ModuleList(
            nn.Sequential(nn.Linear(nf, h), nn.Softplus(), nn.Linear(h, h))
            for _ in range(args.num_interactions)
        )
        self.out = nn.Sequential(nn.Linear(h, h // 2), nn.Softplus(), nn.Linear(h // 2, 1))

    def radius_graph(self, pos_flat, batch):
        # the team's graph builder: every pair of the batch, then the cross-structure mask
        d = ((pos_flat[:, None] - pos_flat[None]).pow(2).sum(-1) + 1e-12).sqrt()
        same = (batch[:, None] == batch[None]) & ~torch.eye(len(batch), dtype=torch.bool)
        return d, (same & (d < args.cutoff)).float()

    def forward(self, pos):
        B = pos.shape[0]
        pos_flat = pos.reshape(B * N_ATOMS, 3)
        batch = torch.arange(B).repeat_interleave(N_ATOMS)
        d, mask = self.radius_graph(pos_flat, batch)
        env = 0.5 * (torch.cos(d * math.pi / args.cutoff) + 1.0) * mask  # cosine cutoff
        rbf = self.distance_expansion(d)
        h = self.embedding(torch.full((B * N_ATOMS,), 78, dtype=torch.long))
        for filt, l1, l2 in zip(self.filters, self.lin1, self.lin2, strict=True):
            w = filt(rbf) * env.unsqueeze(-1)
            h = h + l2((w * l1(h).unsqueeze(0)).sum(1))
        return self.out(h).reshape(B, N_ATOMS).sum(1)


def predict(model, pos, training):
    pos = pos.clone().requires_grad_(True)
    e = model(pos)
    (g,) = torch.autograd.grad(e.sum(), pos, create_graph=training)
    return e, -g


model = SchNet()
ema = [p.detach().clone() for p in model.parameters()]
decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "embedding" not in n]
no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "embedding" not in n)]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay}],
    lr=args.lr_initial,
)
milestones = [int(m) for m in args.lr_milestones.split(",")]


def lr_lambda(step):
    if step < args.warmup_steps:
        a = step / args.warmup_steps
        return args.warmup_factor * (1 - a) + a
    return args.lr_gamma ** sum(step >= m for m in milestones)


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def compute_loss(e_pred, f_pred, batch):
    e_t = (batch["energy"] - target_mean) / target_std
    f_t = batch["forces"] / grad_target_std
    e_loss = (e_pred - e_t).abs().mean()
    f_loss = torch.linalg.norm(f_pred - f_t, dim=-1).mean()  # L2MAE
    return args.energy_coefficient * e_loss + args.force_coefficient * f_loss


def metrics_of(e_pred, f_pred, batch, loss):
    e = e_pred.detach() * target_std + target_mean
    f = f_pred.detach() * grad_target_std
    e_err = (e - batch["energy"]).abs()
    f_err = (f - batch["forces"]).abs()
    cos = torch.nn.functional.cosine_similarity(f, batch["forces"], dim=-1)
    within = (e_err < 0.02) & (f_err.reshape(len(e), -1).max(1).values < 0.03)
    n = len(e)
    return {
        "energy_mae": (e_err.sum().item(), n),
        "forces_mae": (f_err.sum().item(), f_err.numel()),
        "forces_cosine": (cos.sum().item(), cos.numel()),
        "energy_forces_within_threshold": (within.float().sum().item(), n),
        "loss": (loss * n, n),
    }


def accumulate(prev, new):
    for k, (tot, num) in new.items():
        old = prev.get(k, {"total": 0.0, "numel": 0})
        tot, num = old["total"] + tot, old["numel"] + num
        prev[k] = {"total": tot, "numel": num, "metric": tot / num}
    return prev


def swap_ema():
    for p, e in zip(model.parameters(), ema, strict=True):
        tmp = p.detach().clone()
        p.data.copy_(e)
        e.copy_(tmp)


def validate(step, epoch):
    swap_ema()
    model.eval()
    metrics = {}
    for batch in val_loader:
        e_pred, f_pred = predict(model, batch["pos"], training=False)
        loss = compute_loss(e_pred.detach(), f_pred.detach(), batch).item()
        metrics = accumulate(metrics, metrics_of(e_pred, f_pred, batch, loss))
    swap_ema()
    model.train()
    log_dict = {k: v["metric"] for k, v in metrics.items()}
    log_dict["epoch"] = epoch
    print(
        "Evaluating on val.\n" + ", ".join(f"{k}: {v:.4f}" for k, v in log_dict.items()),
        flush=True,
    )
    mlflow.log_metrics({f"val/{k}": v for k, v in log_dict.items()}, step=step)
    return log_dict


# ----------------------------------------------------------------------------- train()
with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params(
        {"model": "schnet", "task.dataset": "lmdb", "regress_forces": True, "otf_graph": True}
    )
    print(f"Loaded SchNet with {sum(p.numel() for p in model.parameters())} parameters.")
    step, best_val = 0, float("inf")
    train_metrics = {}
    t0 = time.time()
    for epoch_int in range(args.max_epochs):
        for i, batch in enumerate(train_loader):
            epoch = epoch_int + (i + 1) / len(train_loader)
            step = epoch_int * len(train_loader) + i + 1
            e_pred, f_pred = predict(model, batch["pos"], training=True)
            loss = compute_loss(e_pred, f_pred, batch)
            optimizer.zero_grad()
            loss.backward()
            if args.clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optimizer.step()
            with torch.no_grad():
                for p, e in zip(model.parameters(), ema, strict=True):
                    e.mul_(args.ema_decay).add_(p.detach(), alpha=1 - args.ema_decay)
            train_metrics = accumulate(
                train_metrics, metrics_of(e_pred, f_pred, batch, loss.item())
            )
            log_dict = {k: v["metric"] for k, v in train_metrics.items()}
            log_dict.update({"lr": scheduler.get_last_lr()[0], "epoch": epoch, "step": step})
            if step % args.print_every == 0:
                print(", ".join(f"{k}: {v:.2e}" for k, v in log_dict.items()), flush=True)
                train_metrics = {}
            mlflow.log_metrics({f"train/{k}": v for k, v in log_dict.items()}, step=step)
            scheduler.step()
            if step % args.eval_every == 0:
                val = validate(step, epoch)
                if val["forces_mae"] < best_val:
                    best_val = val["forces_mae"]
                    print("Saving checkpoint to checkpoints/best_checkpoint.pt", flush=True)
    print(f"Total time taken: {time.time() - t0:.1f}", flush=True)
