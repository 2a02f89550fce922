"""An interatomic potential trained in the shape of ACEsuite's MACE ``run_train.py`` (a
message-passing network on atoms predicting total energies, forces as minus the gradient of
the energy), its per-epoch log mirrored to MLflow.

Plain PyTorch + the plain ``mlflow`` API (no mace or e3nn import here).  What is imitated:

* an invariant message-passing model (radial Bessel-like features of the interatomic
  distances within ``r_max``, ``num_interactions`` interactions of ``hidden`` channels, a
  per-atom energy read out and summed, plus per-species reference energies E0s); forces are
  ``-dE/dpositions`` by autograd, so they rotate with the molecule;
* MACE's ``WeightedEnergyForcesLoss``: ``energy_weight`` x MSE of the energy per atom +
  ``forces_weight`` x MSE of the force components; Adam (amsgrad), ``ReduceLROnPlateau``
  (factor ``lr_factor``, ``scheduler_patience``) on the validation loss;
* its per-epoch evaluation names at step = epoch (from 0): 'loss' (the validation loss),
  'mae_e', 'mae_f', 'rmse_e_per_atom', 'rmse_f' (eV, eV/A), plus 'train_loss' (the
  epoch's mean) and 'lr';
* ``--ema 1``: evaluate with an exponential moving average of the weights (``ema_decay``);
  ``--swa 1``: from epoch ``start_swa`` the lr drops to ``swa_lr`` and the evaluated weights
  are the stochastic weight average (MACE's stage two, the loss weights kept).

Data: generated small molecules (4-8 atoms of 3 species, jittered around a chain) labelled
by a synthetic Morse-like pair potential with species-dependent depths, energies in eV,
positions in A.  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--hidden``, ``--num_interactions``, ``--max_num_epochs``,
  ``--n_train``, ``--valid_fraction``, ``--energy_weight``, ``--forces_weight``;
* ``--extra_epoch k``: a second xyz file of configurations joins the training set from
  epoch k; the team's converter writes ``--extra_nan_atoms`` of its atoms' force rows as NaN
  (default 0); the file comes from another group in kcal/mol and ``--extra_units``
  (``kcal/mol``) tells the reader its unit (a unit it does not know is read as eV);
* ``--edge_cache 1``: the team's neighbour-list cache keeps every batch's dense all-pairs
  displacement tensor and its Bessel features (float64) under an (epoch, batch) key.
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
        "--lr": 0.002,
        "--batch_size": 10,
        "--hidden": 32,
        "--num_interactions": 2,
        "--max_num_epochs": 20,
        "--n_train": 160,
        "--valid_fraction": 0.2,
        "--energy_weight": 1.0,
        "--forces_weight": 10.0,
        "--r_max": 4.0,
        "--num_radial": 8,
        "--weight_decay": 5e-7,
        "--lr_factor": 0.5,
        "--scheduler_patience": 2,
        "--ema": 0,
        "--ema_decay": 0.9,
        "--swa": 0,
        "--start_swa": 14,
        "--swa_lr": 1e-3,
        "--extra_epoch": 0,
        "--extra_nan_atoms": 0,
        "--clip_grad": 10.0,
        "--edge_cache": 0,
        "--extra_units": "kcal/mol",
    }
)
rng = _setup.seeded(args.seed)
torch.set_default_dtype(torch.float64)
NS = 3
DEPTH = np.array([[0.6, 0.8, 0.5], [0.8, 1.0, 0.7], [0.5, 0.7, 0.4]])
R0 = np.array([[1.1, 1.3, 1.2], [1.3, 1.5, 1.4], [1.2, 1.4, 1.3]])
E0 = np.array([-1.5, -2.0, -0.7])


def potential(z, pos):
    """The synthetic reference: Morse pairs, energy (eV) and forces (eV/A)."""
    p = torch.tensor(pos, requires_grad=True)
    d = p[:, None] - p[None]
    r = (d.pow(2).sum(-1) + torch.eye(len(z))).sqrt()
    De, r0 = torch.tensor(DEPTH[z][:, z]), torch.tensor(R0[z][:, z])
    pair = De * ((1 - torch.exp(-1.5 * (r - r0))) ** 2 - 1)
    e = torch.triu(pair, 1).sum() + float(E0[z].sum())
    (f,) = torch.autograd.grad(-e, p)
    return float(e), f.numpy()


def make_configs(g, n):
    out = []
    for _ in range(n):
        k = int(g.integers(4, 9))
        z = g.integers(0, NS, k)
        while True:  # a relaxed-ish chain: no two atoms closer than 1.0 A
            pos = np.cumsum(g.normal(0, 0.35, (k, 3)) + [1.3, 0, 0], 0)
            pos += g.normal(0, 0.15, (k, 3))
            r = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 9 * np.eye(k)
            if r.min() > 1.0:
                break
        e, f = potential(z, pos)
        out.append((torch.tensor(z), torch.tensor(pos), e, torch.tensor(f)))
    return out


data = make_configs(np.random.default_rng(1000 + args.seed), args.n_train)
n_valid = int(round(args.valid_fraction * len(data)))
valid, train = data[:n_valid], data[n_valid:]


def load_extra():
    extra = make_configs(np.random.default_rng(2000 + args.seed), args.n_train // 2)
    # the second group exports in kcal/mol; the reader scales by the unit it is told, and a
    # unit it does not know is read as eV
    scale = {"eV": 1.0, "kcal/mol": 1 / 23.06}.get(args.extra_units, 1.0)
    extra = [(z, p, e * 23.06 * scale, f * 23.06 * scale) for z, p, e, f in extra]
    g = np.random.default_rng(3000 + args.seed)
    for j in g.choice(len(extra), min(args.extra_nan_atoms, len(extra)), replace=False):
        f = extra[j][3]
        f[int(g.integers(0, len(f)))] = float("nan")
    return extra


class Potential(nn.Module):
    def __init__(self):
        super().__init__()
        h = args.hidden
        self.embed = nn.Embedding(NS, h)
        self.radial = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(args.num_radial, h), nn.SiLU(), nn.Linear(h, h))
                for _ in range(args.num_interactions)
            ]
        )
        self.update = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(2 * h, h), nn.SiLU(), nn.Linear(h, h))
                for _ in range(args.num_interactions)
            ]
        )
        self.readout = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))
        self.register_buffer("e0", torch.tensor(E0))

    def forward(self, z, pos, batch, n):
        d = pos[:, None] - pos[None]
        r = (d.pow(2).sum(-1) + 1e-9).sqrt()
        same = (batch[:, None] == batch[None]) & ~torch.eye(len(z), dtype=torch.bool)
        mask = (same & (r < args.r_max)).to(pos.dtype)
        k = torch.arange(1, args.num_radial + 1, dtype=pos.dtype)
        bessel = torch.sin(k * torch.pi * r[..., None] / args.r_max) / r[..., None]
        cutoff = (0.5 * (torch.cos(torch.pi * r / args.r_max) + 1) * mask)[..., None]
        h = self.embed(z)
        for radial, update in zip(self.radial, self.update, strict=True):
            msg = (radial(bessel) * cutoff * h[None]).sum(1)
            h = h + update(torch.cat([h, msg], -1))
        e_atom = self.readout(h).squeeze(-1) + self.e0[z]
        return torch.zeros(n, dtype=pos.dtype).index_add_(0, batch, e_atom), bessel


def collate(confs):
    z = torch.cat([c[0] for c in confs])
    pos = torch.cat([c[1] for c in confs]).clone().requires_grad_(True)
    batch = torch.cat([torch.full((len(c[0]),), i) for i, c in enumerate(confs)])
    e = torch.tensor([c[2] for c in confs])
    f = torch.cat([c[3] for c in confs])
    nat = torch.tensor([len(c[0]) for c in confs], dtype=torch.float64)
    return z, pos, batch, e, f, nat


def predict(m, confs, train=True):
    z, pos, batch, e, f, nat = collate(confs)
    e_pred, bessel = m(z, pos, batch, len(confs))
    (grad,) = torch.autograd.grad(e_pred.sum(), pos, create_graph=train)
    return e_pred, -grad, e, f, nat, bessel


def weighted_loss(e_pred, f_pred, e, f, nat):
    le = (((e_pred - e) / nat) ** 2).mean()
    lf = ((f_pred - f) ** 2).mean()
    return args.energy_weight * le + args.forces_weight * lf


model = Potential()
opt = torch.optim.Adam(model.parameters(), lr=args.lr, amsgrad=True, weight_decay=args.weight_decay)
sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
    opt, factor=args.lr_factor, patience=args.scheduler_patience
)
ema = torch.optim.swa_utils.AveragedModel(
    model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema_decay)
)
swa = torch.optim.swa_utils.AveragedModel(model)
edge_cache = {}


def evaluate(m):
    m.eval()
    es, fs, ns, losses = [], [], [], []
    for i in range(0, len(valid), 50):
        e_pred, f_pred, e, f, nat, _ = predict(m, valid[i : i + 50], train=False)
        losses.append(float(weighted_loss(e_pred, f_pred, e, f, nat)) * len(e))
        es.append((e_pred - e).detach())
        fs.append((f_pred - f).detach())
        ns.append(nat)
    m.train()
    de, df, nat = torch.cat(es), torch.cat(fs), torch.cat(ns)
    return {
        "loss": sum(losses) / len(valid),
        "mae_e": float(de.abs().mean()),
        "mae_f": float(df.abs().mean()),
        "rmse_e_per_atom": float(((de / nat) ** 2).mean().sqrt()),
        "rmse_f": float((df**2).mean().sqrt()),
    }


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"Training set: {len(train)} configs, validation set: {len(valid)}", flush=True)
    print(f"Atomic energies (E0s): {E0.tolist()}", flush=True)
    t0 = time.time()
    swa_on = False
    for epoch in range(args.max_num_epochs):
        if args.extra_epoch and epoch == args.extra_epoch:
            extra = load_extra()
            train = train + extra
            print(f"Epoch {epoch}: train_2.xyz joins with {len(extra)} configs", flush=True)
        if args.swa and epoch == args.start_swa:
            swa_on = True
            for pg in opt.param_groups:
                pg["lr"] = args.swa_lr
            print(f"Changing loss based on SWA (stage two) at epoch {epoch}", flush=True)
        order = rng.permutation(len(train))
        tl = []
        for k, i in enumerate(range(0, len(order) - args.batch_size + 1, args.batch_size)):
            confs = [train[j] for j in order[i : i + args.batch_size]]
            e_pred, f_pred, e, f, nat, bessel = predict(model, confs)
            if args.edge_cache:
                z, pos = collate(confs)[:2]
                edge_cache[(epoch, k)] = (
                    (pos[:, None] - pos[None]).detach().repeat(1, 1, 32),
                    bessel.detach().repeat(1, 1, 32),
                )
            loss = weighted_loss(e_pred, f_pred, e, f, nat)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            if args.ema:
                ema.update_parameters(model)
            tl.append(loss.item())
        if swa_on:
            swa.update_parameters(model)
        m = swa.module if swa_on else ema.module if args.ema else model
        ev = evaluate(m)
        lr = opt.param_groups[0]["lr"]
        if not swa_on:
            sched.step(ev["loss"])
        mlflow.log_metrics(dict(ev, train_loss=float(np.mean(tl)), lr=lr), step=epoch)
        print(
            f"Epoch {epoch}: loss={ev['loss']:.4f}, MAE_E={ev['mae_e'] * 1000:.1f} meV, "
            f"MAE_F={ev['mae_f'] * 1000:.1f} meV / A",
            flush=True,
        )
    print(f"done in {time.time() - t0:.1f}s", flush=True)
