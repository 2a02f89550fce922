"""A tiny interatomic potential trained the way NequIP's ``nequip-train`` does, its per-epoch
``metrics_epoch.csv`` row mirrored to MLflow by the team (the names its wandb logger uses).

Plain PyTorch + numpy + the plain ``mlflow`` API (no nequip, e3nn or ase import here).  What
is imitated:

* the data: 8-atom clusters of one species (a 2 x 2 x 2 cube at the Lennard-Jones spacing,
  every atom displaced by a Gaussian of ``md_temperature`` x 0.05 Angstrom, as frames of a hot
  MD run; frames with a pair closer than 0.95 Angstrom, which the reference code flags as
  close contacts, are replaced by the export), labelled with a Lennard-Jones potential
  (epsilon 1 eV, sigma 1 Angstrom, shifted at ``r_max``) whose forces come from autograd, as a
  reference calculator's would;
  ``n_train`` frames for training and ``n_val`` for validation;
* the model: a radial Bessel basis (``num_basis`` 8) with NequIP's polynomial cutoff (p = 6)
  at ``r_max`` 2.5, a two-layer radial network per edge, edge features summed per atom and an
  atom-wise MLP to a per-atom energy, rescaled by the force RMS and shifted by the mean
  per-atom energy of the training set (``PerSpeciesScaleShift``); total energy = the sum;
  forces = -dE/dr by autograd (``ForceOutput``);
* the trainer: ``loss_coeffs`` forces 1 and total_energy 1 (per-atom MSE), Adam
  (``learning_rate`` 2e-3), ``ReduceLROnPlateau`` on ``validation_loss`` (patience 2, factor
  0.5), ``batch_size`` frames per step, ``max_epochs``; after each epoch the row
  ``training_loss``, ``training_e_mae`` (total energy, eV), ``training_f_mae``,
  ``training_f_rmse`` (eV/Angstrom), the same for ``validation_``, ``LR``, ``epoch`` and
  ``wall`` (seconds since the start), at ``step = epoch`` from 1.

Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--batch_size``, ``--max_epochs``, ``--n_train``, ``--n_val``,
  ``--num_features``, ``--r_max``, ``--lr_scheduler`` (``plateau`` or ``cosine``),
  ``--md_temperature``;
* ``--extra_epoch k``: frames of the group's second MD run (``md2.npz``) join the training set
  at epoch k; ``--extra_units``: the units that export was written in (``eV`` or
  ``kcal/mol``; the loader reads it as eV); ``--extra_failed``: how many frames of it whose
  reference calculation did not converge (written as NaN by the export); ``--extra_key_map``:
  the team's ``key_mapping`` for that file's energy field (``energy:total_energy``).
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--learning_rate": 2e-3,
        "--batch_size": 10,
        "--max_epochs": 25,
        "--n_train": 300,
        "--n_val": 60,
        "--num_features": 32,
        "--num_basis": 8,
        "--r_max": 2.5,
        "--lr_scheduler": "plateau",
        "--md_temperature": 1.0,
        "--extra_epoch": 0,
        "--extra_frames": 300,
        "--extra_units": "eV",
        "--extra_failed": 0,
        "--extra_key_map": "energy:total_energy",
    }
)
rng = _setup.seeded(args.seed)
N = 8
KCAL_PER_EV = 23.0605


def lj_energy(pos, r_max=2.5):
    """Shifted Lennard-Jones (epsilon 1, sigma 1) of a batch of frames, (B, N, 3) -> (B,)."""
    d = pos[:, :, None] - pos[:, None]
    eye = torch.eye(N, dtype=torch.bool)
    r = torch.sqrt((d**2).sum(-1) + eye.double())
    inv6 = r**-6
    shift = r_max**-12 - r_max**-6
    e = 4 * (inv6**2 - inv6 - shift) * ((r < r_max) & ~eye)
    return 0.5 * e.sum((1, 2))


def reference(pos):
    p = torch.from_numpy(pos).double().requires_grad_(True)
    e = lj_energy(p)
    (g,) = torch.autograd.grad(e.sum(), p)
    return e.detach().numpy(), (-g).numpy()


def md_frames(n, g, temperature):
    a = 2 ** (1 / 6)
    cube = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float) * a
    pos = cube[None] + g.normal(0, 0.05 * temperature, (n, N, 3))
    while True:  # the export drops frames the reference code flags as close contacts
        d = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1) + 9 * np.eye(N)
        close = d.min((1, 2)) < 0.95
        if not close.any():
            break
        pos[close] = cube[None] + g.normal(0, 0.05 * temperature, (int(close.sum()), N, 3))
    e, f = reference(pos)
    return {"pos": pos, "total_energy": e, "forces": f}


data_rng = np.random.default_rng(1000 + args.seed)
frames = md_frames(args.n_train + args.n_val, data_rng, args.md_temperature)
train = {k: v[: args.n_train] for k, v in frames.items()}
val = {k: v[args.n_train :] for k, v in frames.items()}


def load_md2():
    """The group's second MD run, as its export writes it (an npz with its own field names)."""
    g = np.random.default_rng(2000 + args.seed)
    fr = md_frames(args.extra_frames, g, args.md_temperature * 1.1)
    raw = {"pos": fr["pos"], "energy": fr["total_energy"], "forces": fr["forces"]}
    if args.extra_units == "kcal/mol":
        raw["energy"] = raw["energy"] * KCAL_PER_EV
        raw["forces"] = raw["forces"] * KCAL_PER_EV
    if args.extra_failed:
        bad = g.choice(args.extra_frames, args.extra_failed, replace=False)
        raw["energy"][bad] = np.nan
        raw["forces"][bad] = np.nan
    src, dst = args.extra_key_map.split(":")
    return {"pos": raw["pos"], dst: raw[src], "forces": raw["forces"]}


# ----------------------------------------------------------------------------- model
class BesselBasis(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.arange(1, args.num_basis + 1) * np.pi / args.r_max)

    def forward(self, r):
        return 2 / args.r_max * torch.sin(self.w * r[..., None]) / r[..., None]


def poly_cutoff(r, p=6.0):
    x = r / args.r_max
    out = (
        1.0
        - ((p + 1) * (p + 2) / 2) * x**p
        + p * (p + 2) * x ** (p + 1)
        - (p * (p + 1) / 2) * x ** (p + 2)
    )
    return out * (x < 1.0)


class Potential(nn.Module):
    def __init__(self, shift, scale):
        super().__init__()
        h = args.num_features
        self.basis = BesselBasis()
        self.radial = nn.Sequential(
            nn.Linear(args.num_basis, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU()
        )
        self.atom = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))
        self.shift, self.scale = shift, scale

    def forward(self, pos):
        d = pos[:, :, None] - pos[:, None]
        eye = torch.eye(N, dtype=torch.bool)
        r = torch.sqrt((d**2).sum(-1) + eye.float())
        edge = self.radial(self.basis(r)) * (poly_cutoff(r) * ~eye)[..., None]
        atom_e = self.atom(edge.sum(2)).squeeze(-1) * self.scale + self.shift
        return atom_e.sum(1)


def energy_and_forces(model, pos, training):
    p = pos.clone().requires_grad_(True)
    e = model(p)
    (g,) = torch.autograd.grad(e.sum(), p, create_graph=training)
    return e, -g


def to_t(d):
    return {k: torch.from_numpy(np.asarray(v)).float() for k, v in d.items()}


train_t, val_t = to_t(train), to_t(val)
shift = float(train["total_energy"].mean() / N)
scale = float(np.sqrt((train["forces"] ** 2).mean()))
model = Potential(shift, scale)
opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
if args.lr_scheduler == "cosine":
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.max_epochs)
else:
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)


def batch_metrics(e, f, ref):
    de = e - ref["total_energy"]
    df = f - ref["forces"]
    loss_f = (df**2).mean()
    loss_e = ((de / N) ** 2).mean()
    return loss_f + loss_e, de.abs(), df.abs(), df**2


def evaluate(data):
    tot, e_abs, f_abs, f_sq, n = 0.0, [], [], [], len(data["pos"])
    for i in range(0, n, 20):
        b = {k: v[i : i + 20] for k, v in data.items()}
        e, f = energy_and_forces(model, b["pos"], False)
        loss, ea, fa, fs = batch_metrics(e.detach(), f.detach(), b)
        tot += float(loss) * len(b["pos"])
        e_abs.append(ea), f_abs.append(fa.flatten()), f_sq.append(fs.flatten())
    return tot / n, torch.cat(e_abs).mean(), torch.cat(f_abs).mean(), torch.cat(f_sq).mean().sqrt()


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"Loaded {args.n_train} training and {args.n_val} validation frames", flush=True)
    t_start = time.time()
    pool = train_t
    for epoch in range(1, args.max_epochs + 1):
        if args.extra_epoch and epoch == args.extra_epoch:
            md2 = to_t(load_md2())
            pool = {k: torch.cat([train_t[k], md2[k]]) for k in train_t}
            print(f"epoch {epoch}: md2.npz joins, {len(pool['pos'])} training frames", flush=True)
        n = len(pool["pos"])
        order = torch.from_numpy(rng.permutation(n))
        tot, e_abs, f_abs, f_sq = 0.0, [], [], []
        for i in range(0, n - args.batch_size + 1, args.batch_size):
            idx = order[i : i + args.batch_size]
            b = {k: v[idx] for k, v in pool.items()}
            e, f = energy_and_forces(model, b["pos"], True)
            loss, ea, fa, fs = batch_metrics(e, f, b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss) * len(idx)
            e_abs.append(ea.detach()), f_abs.append(fa.detach().flatten())
            f_sq.append(fs.detach().flatten())
        n_seen = sum(len(x) for x in e_abs)
        v_loss, v_e, v_f, v_frmse = evaluate(val_t)
        row = {
            "training_loss": tot / n_seen,
            "training_e_mae": float(torch.cat(e_abs).mean()),
            "training_f_mae": float(torch.cat(f_abs).mean()),
            "training_f_rmse": float(torch.cat(f_sq).mean().sqrt()),
            "validation_loss": v_loss,
            "validation_e_mae": float(v_e),
            "validation_f_mae": float(v_f),
            "validation_f_rmse": float(v_frmse),
            "LR": opt.param_groups[0]["lr"],
            "epoch": epoch,
            "wall": time.time() - t_start,
        }
        mlflow.log_metrics(row, step=epoch)
        print(
            f"  Train      #  {epoch:4d}  loss {row['training_loss']:.4g}  f_mae "
            f"{row['training_f_mae']:.4g}  e_mae {row['training_e_mae']:.4g}\n"
            f"  Validation #  {epoch:4d}  loss {v_loss:.4g}  f_mae {float(v_f):.4g}  "
            f"e_mae {float(v_e):.4g}  LR {row['LR']:.3g}",
            flush=True,
        )
        if args.lr_scheduler == "cosine":
            sched.step()
        else:
            sched.step(v_loss)
    print(f"Finished training, wall {time.time() - t_start:.1f} s", flush=True)
