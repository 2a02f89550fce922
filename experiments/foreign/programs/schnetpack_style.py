"""A SchNet energy-and-forces potential trained the SchNetPack 2 way (``spk.task.AtomisticTask``
under a Lightning ``Trainer``), its logged values mirrored to MLflow by the team's logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no SchNetPack, no Lightning here).  What is
imitated:

* ``spk.representation.SchNet``: ``nn.Embedding`` of the nuclear charges (``n_atom_basis``),
  ``GaussianRBF(n_rbf, cutoff)`` of the interatomic distances, ``CosineCutoff(cutoff)``,
  ``n_interactions`` ``SchNetInteraction`` blocks (``in2f`` -> continuous-filter convolution
  with a filter network -> ``f2out`` with shifted softplus, residual);
* ``spk.atomistic.Atomwise(n_in, output_key="energy")`` summed over atoms, ``Forces()`` =
  -dE/dR by autograd (``create_graph`` in training), ``RemoveOffsets`` / ``AddOffsets`` with
  the atom reference energies and the per-atom mean, as in the MD17 tutorial;
* ``ModelOutput("energy", loss_weight=0.01)`` and ``ModelOutput("forces", loss_weight=0.99)``
  with ``MSELoss`` and ``MeanAbsoluteError`` metrics; ``AtomisticTask`` logs ``train_loss``
  every ``log_every_n_steps`` and, at each validation epoch end, ``val_loss``,
  ``val_energy_MAE`` and ``val_forces_MAE`` (kcal/mol and kcal/mol/Å), all at the trainer's
  ``global_step`` (from 1 after the first optimiser step); ``AdamW(lr)`` with
  ``ReduceLROnPlateau(factor=0.5, patience=...)`` on ``val_loss`` and ``LearningRateMonitor``'s
  ``lr-AdamW``;
* Lightning's ``ThroughputMonitor``: ``train/batches_per_sec`` and ``train/samples_per_sec``
  over a 10-batch window every ``log_every_n_steps``;
* ``ModelCheckpoint(monitor=..., every_n_epochs=...)`` writing ``best_inference_model``.

Data: generated conformers of a seven-atom molecule (C2H4O, an acetaldehyde-like frame) around
its equilibrium, energies (total, with the atom reference energies, in kcal/mol) and forces
from a pairwise Morse force field; ``num_train`` / ``num_val`` conformers.  Written without
looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--n_atom_basis``, ``--n_interactions``, ``--cutoff``,
  ``--num_train``, ``--max_epochs``;
* ``--properties_dtype float16``: the team's cached dataset stores the properties in half
  precision to halve its memory;
* ``--extra_db_epoch k``: a second DFT batch (``extra_db_rows`` conformers) joins the training
  split at epoch k; ``--extra_db_units`` ``kcal/mol`` (as the project's) or ``eV`` (the
  second group's export, energies and forces in eV and eV/Å);
* ``--provenance_log 1``: the team's data-provenance check appends every batch's conformer ids
  and distances to ``provenance.jsonl`` and reads the whole file back to check for duplicates;
* ``--checkpoint_monitor``, ``--checkpoint_every_n_epochs``: the ``ModelCheckpoint`` settings.
"""

import json
import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 1e-3,
        "--batch_size": 20,
        "--n_atom_basis": 32,
        "--n_interactions": 2,
        "--n_rbf": 20,
        "--cutoff": 5.0,
        "--num_train": 600,
        "--num_val": 100,
        "--max_epochs": 40,
        "--log_every_n_steps": 5,
        "--patience": 5,
        "--properties_dtype": "float32",  # float32 | float16
        "--extra_db_epoch": 0,
        "--extra_db_rows": 300,
        "--extra_db_units": "kcal/mol",  # kcal/mol | eV
        "--provenance_log": 0,
        "--checkpoint_monitor": "val_loss",
        "--checkpoint_every_n_epochs": 5,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
Z = torch.tensor([6, 6, 8, 1, 1, 1, 1])
R0 = torch.tensor(
    [
        [0.00, 0.00, 0.00],
        [1.50, 0.00, 0.00],
        [2.20, 0.98, 0.00],
        [2.00, -0.95, 0.00],
        [-0.36, 1.03, 0.00],
        [-0.36, -0.51, 0.89],
        [-0.36, -0.51, -0.89],
    ],
    dtype=torch.float64,
)
ATOMREF = {1: -313.6, 6: -23765.4, 8: -47101.9}  # kcal/mol
n_atoms = len(Z)
iu = torch.triu_indices(n_atoms, n_atoms, 1)
r0 = (R0[iu[0]] - R0[iu[1]]).norm(dim=-1)
De = torch.where(r0 < 1.6, 100.0, 4.0).double()
alpha = torch.where(r0 < 1.6, 2.0, 1.2).double()
e_ref = float(sum(ATOMREF[int(z)] for z in Z))


def force_field(R):
    R = R.clone().requires_grad_(True)
    r = (R[:, iu[0]] - R[:, iu[1]]).norm(dim=-1)
    E = (De * (1 - torch.exp(-alpha * (r - r0))) ** 2).sum(-1) + e_ref
    (g,) = torch.autograd.grad(E.sum(), R)
    return E.detach(), -g


def conformers(n, r):
    R = R0 + torch.tensor(r.normal(0, 0.07, (n, n_atoms, 3)))
    E, Fo = force_field(R)
    return R.float(), E, Fo.float()


drng = np.random.default_rng(700 + args.seed)
R_tr, E_tr, F_tr = conformers(args.num_train, drng)
R_va, E_va, F_va = conformers(args.num_val, drng)
R_x, E_x, F_x = conformers(args.extra_db_rows, drng)
if args.extra_db_units == "eV":
    E_x, F_x = E_x / 23.0605, F_x / 23.0605
if args.properties_dtype == "float16":  # the cached dataset's properties in half precision
    E_tr, F_tr, E_x, F_x = E_tr.half(), F_tr.half(), E_x.half(), F_x.half()
E_tr, F_tr, E_x, F_x = E_tr.double(), F_tr.float(), E_x.double(), F_x.float()
# RemoveOffsets: atom reference energies and the per-atom mean of the training split
mean_per_atom = float((E_tr - e_ref).mean() / n_atoms)


# ----------------------------------------------------------------------------- model
class MisconfigurationException(Exception):
    pass


def ssp(x):
    return F.softplus(x) - math.log(2.0)


class SchNetInteraction(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.in2f = nn.Linear(n, n, bias=False)
        self.filter1 = nn.Linear(args.n_rbf, n)
        self.filter2 = nn.Linear(n, n)
        self.f2out1 = nn.Linear(n, n)
        self.f2out2 = nn.Linear(n, n)

    def forward(self, x, f_ij, rcut_ij):
        W = self.filter2(ssp(self.filter1(f_ij))) * rcut_ij[..., None]  # (B, N, N, n)
        xj = self.in2f(x)  # (B, N, n)
        v = (W * xj[:, None, :, :]).sum(2)
        return x + self.f2out2(ssp(self.f2out1(v)))


class SchNet(nn.Module):
    def __init__(self):
        super().__init__()
        n = args.n_atom_basis
        self.embedding = nn.Embedding(10, n)
        self.register_buffer("offsets", torch.linspace(0, args.cutoff, args.n_rbf))
        self.widths = (args.cutoff / (args.n_rbf - 1)) ** 2
        self.interactions = nn.ModuleList(SchNetInteraction(n) for _ in range(args.n_interactions))
        self.out1 = nn.Linear(n, n // 2)
        self.out2 = nn.Linear(n // 2, 1)

    def forward(self, R, create_graph):
        if not R.requires_grad:
            R = R.requires_grad_(True)
        d = R[:, :, None, :] - R[:, None, :, :]
        eye = torch.eye(n_atoms, dtype=torch.bool)
        r = torch.sqrt((d * d).sum(-1) + eye.float())  # no self-distance of 0 under the sqrt
        f_ij = torch.exp(-0.5 / self.widths * (r[..., None] - self.offsets) ** 2)
        rcut = 0.5 * (torch.cos(r * math.pi / args.cutoff) + 1.0) * (r < args.cutoff)
        rcut = rcut.masked_fill(eye, 0.0)
        x = self.embedding(Z).expand(len(R), -1, -1)
        for block in self.interactions:
            x = block(x, f_ij, rcut)
        yi = self.out2(ssp(self.out1(x)))[..., 0]
        e_model = yi.sum(-1)
        (g,) = torch.autograd.grad(e_model.sum(), R, create_graph=create_graph)
        # AddOffsets: the per-atom mean and the atom reference energies
        energy = e_model.double() + mean_per_atom * n_atoms + e_ref
        return energy, -g


model = SchNet()
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
    optimizer, factor=0.5, patience=args.patience
)


def task_loss(E_pred, F_pred, E, Fo):
    return 0.01 * F.mse_loss(E_pred, E).float() + 0.99 * F.mse_loss(F_pred, Fo)


def validate():
    E_pred, F_pred = model(R_va.clone(), create_graph=False)
    E_pred, F_pred = E_pred.detach(), F_pred.detach()
    return {
        "val_loss": float(task_loss(E_pred, F_pred, E_va, F_va)),
        "val_energy_MAE": float((E_pred - E_va).abs().mean()),
        "val_forces_MAE": float((F_pred - F_va).abs().mean()),
    }


def provenance(ids, R):
    """The team's provenance check: append the batch, then read the whole log back."""
    with open("provenance.jsonl", "a") as f:
        for i, Ri in zip(ids.tolist(), R, strict=True):
            dist = torch.pdist(Ri).tolist()
            f.write(json.dumps({"id": i, "dist": [round(x, 5) for x in dist]}) + "\n")
    seen = set()
    with open("provenance.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            seen.add((rec["id"], tuple(rec["dist"][:3])))
    return len(seen)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"SchNet(n_atom_basis={args.n_atom_basis}, n_interactions={args.n_interactions}, "
        f"cutoff={args.cutoff}) {n_params} parameters; {len(R_tr)} train / {len(R_va)} val "
        f"conformers\nGPU available: False, used: False\nTPU available: False, using: 0 TPU cores",
        flush=True,
    )
    R_pool, E_pool, F_pool = R_tr, E_tr, F_tr
    ids_pool = torch.arange(len(R_tr))
    global_step = 0
    times = []
    t_start = time.time()
    for epoch in range(args.max_epochs):
        if args.extra_db_epoch and epoch == args.extra_db_epoch:
            R_pool = torch.cat([R_tr, R_x])
            E_pool = torch.cat([E_tr, E_x])
            F_pool = torch.cat([F_tr, F_x])
            ids_pool = torch.arange(len(R_pool))
            print(
                f"Epoch {epoch}: second DFT batch joined, {len(R_pool)} train conformers",
                flush=True,
            )
        order = torch.randperm(len(R_pool))
        for b in range(0, len(order), args.batch_size):
            t0 = time.time()
            idx = order[b : b + args.batch_size]
            if args.provenance_log:
                provenance(ids_pool[idx], R_pool[idx])
            E_pred, F_pred = model(R_pool[idx].clone(), create_graph=True)
            loss = task_loss(E_pred, F_pred, E_pool[idx], F_pool[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            global_step += 1
            times.append(time.time() - t0)
            if global_step % args.log_every_n_steps == 0:
                window = times[-10:]
                mlflow.log_metrics(
                    {
                        "train_loss": loss.item(),
                        "train/batches_per_sec": len(window) / sum(window),
                        "train/samples_per_sec": len(window) * args.batch_size / sum(window),
                        "lr-AdamW": optimizer.param_groups[0]["lr"],
                    },
                    step=global_step,
                )
        row = validate()
        scheduler.step(row["val_loss"])
        mlflow.log_metrics(row, step=global_step)
        print(
            f"Epoch {epoch}: 100%|##########| {math.ceil(len(R_pool) / args.batch_size)}/"
            f"{math.ceil(len(R_pool) / args.batch_size)} [train_loss={loss.item():.3f}, "
            f"val_loss={row['val_loss']:.3f}, val_energy_MAE={row['val_energy_MAE']:.3f}, "
            f"val_forces_MAE={row['val_forces_MAE']:.3f}]",
            flush=True,
        )
        if (epoch + 1) % args.checkpoint_every_n_epochs == 0:
            if args.checkpoint_monitor not in row:
                raise MisconfigurationException(
                    f"`ModelCheckpoint(monitor={args.checkpoint_monitor!r})` could not find the "
                    f"monitored key in the returned metrics: {sorted(row) + ['epoch', 'step']}. "
                    f"HINT: Did you call `log({args.checkpoint_monitor!r}, value)` in the "
                    f"`LightningModule`?"
                )
            torch.save(model.state_dict(), "best_inference_model")
    print(
        f"`Trainer.fit` stopped: `max_epochs={args.max_epochs}` reached. ({time.time() - t_start:.1f} s)",
        flush=True,
    )
