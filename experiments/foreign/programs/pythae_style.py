"""A variational autoencoder trained as pythae trains one (``pythae.trainers.BaseTrainer`` on a
``pythae.models.VAE``), logged by pythae's own ``MLFlowCallback``.

Plain PyTorch + numpy + the plain ``mlflow`` API (no pythae here).  What is imitated, as pythae
logs it:

* ``MLFlowCallback.setup`` logs the training config and the model config as params;
* ``BaseTrainer.train`` loops ``for epoch in range(1, num_epochs + 1)`` and, after the eval
  epoch, calls ``on_log`` with ``{"train_epoch_loss": ..., "eval_epoch_loss": ...}`` and
  ``global_step=epoch``; the callback logs those with ``mlflow.log_metrics(..., step=epoch)``.
  These are the only metrics: no learning rate, no timing, no gradient norm;
* the VAE loss as pythae computes it with ``reconstruction_loss="mse"``: per sample
  ``0.5 * sum over pixels of (x - recon)^2`` plus the KL divergence
  ``-0.5 * sum(1 + log_var - mu^2 - exp(log_var))``, averaged over the batch (``--beta``
  weights the KL term: 1 is pythae's ``VAE``, another value its ``BetaVAE``); an epoch's loss
  is the mean of its batch losses;
* pythae's defaults: Adam, ``per_device_train_batch_size=64``, ``per_device_eval_batch_size``
  64, shuffled training loader, no scheduler unless one is given (``--scheduler step`` is a
  ``StepLR``); the trainer's log lines ("Training of epoch 3/60", "Train loss: ...",
  "Eval loss: ...", "New best model on eval saved!").

Data: scikit-learn's 8x8 digits (1797 images) scaled to [0, 1], upsampled to ``--image_size`` pixels a side (as the team's export stores them) and flattened,
``--eval_size`` of them held out.  Encoder and decoder are MLPs (``--hidden`` wide) with a
``--latent_dim`` Gaussian latent.  Written without looking at the doctor.

Faults are real code paths and data: ``--learning_rate`` far too high or far too low;
``--corrupt_rows N``: N images of the export were written with missing pixels (NaN), and the
script casts the array without a check; ``--gallery_res R``: a callback that renders a gallery
of reconstructions every epoch upsampled to R x R pixels and keeps every frame in memory to
write an animation at the end.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 8,
        "--num_epochs": 60,
        "--learning_rate": 1e-3,
        "--per_device_train_batch_size": 64,
        "--per_device_eval_batch_size": 64,
        "--latent_dim": 8,
        "--hidden": 256,
        "--image_size": 16,
        "--eval_size": 300,
        "--scheduler": "none",
        "--scheduler_gamma": 0.5,
        "--scheduler_step": 20,
        "--beta": 1.0,
        "--corrupt_rows": 0,
        "--gallery_res": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
images = load_digits().images.astype(np.float64) / 16.0
rep = args.image_size // 8  # the export stores the digits upsampled to image_size pixels
images = np.kron(images, np.ones((1, rep, rep))).reshape(len(images), -1)
dim = images.shape[1]
order = rng.permutation(len(images))
images = images[order]
if args.corrupt_rows:
    # the re-export left some images with missing pixels; nothing checks for them
    bad = rng.choice(len(images) - args.eval_size, args.corrupt_rows, replace=False)
    for i in bad:
        images[args.eval_size + i, rng.choice(dim, 5, replace=False)] = np.nan
data = torch.tensor(images, dtype=torch.float32)
eval_data, train_data = data[: args.eval_size], data[args.eval_size :]


# ----------------------------------------------------------------------------- model
class VAE(nn.Module):
    def __init__(self, dim, hidden, latent):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.embedding = nn.Linear(hidden, latent)
        self.log_var = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
            nn.Sigmoid(),
        )

    def forward(self, x):
        h = self.encoder(x)
        mu, log_var = self.embedding(h), self.log_var(h)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        recon = self.decoder(z)
        recon_loss = 0.5 * ((recon - x) ** 2).sum(-1)
        kld = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(-1)
        return recon, (recon_loss + args.beta * kld).mean()


model = VAE(dim, args.hidden, args.latent_dim)
optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
scheduler = (
    torch.optim.lr_scheduler.StepLR(optimizer, args.scheduler_step, args.scheduler_gamma)
    if args.scheduler == "step"
    else None
)


def gallery(recon, res):
    """A 4x4 grid of reconstructions, nearest-neighbour upsampled to res x res (RGB, float)."""
    n = args.image_size
    grid = (
        recon[:16].detach().numpy().reshape(4, 4, n, n).transpose(0, 2, 1, 3).reshape(4 * n, 4 * n)
    )
    rep = max(1, res // (4 * n))
    img = np.kron(grid.astype(np.float64), np.ones((rep, rep)))
    return np.repeat(img[:, :, None], 3, axis=2)


# ----------------------------------------------------------------------------- train
frames = []
with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params(
        {
            "model_name": "VAE",
            "input_dim": f"(1, {args.image_size}, {args.image_size})",
            "reconstruction_loss": "mse",
        }
    )
    print(
        f"Model passed sanity check !\nCreated dummy_output_dir/VAE_training_{time.strftime('%Y-%m-%d_%H-%M-%S')}."
        f"\nTraining params:\n - max_epochs: {args.num_epochs}\n - per_device_train_batch_size: "
        f"{args.per_device_train_batch_size}\n - per_device_eval_batch_size: "
        f"{args.per_device_eval_batch_size}\n - checkpoint saving every: None\n"
        f"Optimizer: Adam (lr {args.learning_rate})\nScheduler: {args.scheduler}\n"
        "Successfully launched training !",
        flush=True,
    )
    best = float("inf")
    bs = args.per_device_train_batch_size
    for epoch in range(1, args.num_epochs + 1):
        model.train()
        perm = torch.randperm(len(train_data))
        losses = []
        for i in range(0, len(train_data), bs):
            x = train_data[perm[i : i + bs]]
            _, loss = model(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        train_loss = float(np.mean(losses))
        model.eval()
        with torch.no_grad():
            ev = []
            for i in range(0, len(eval_data), args.per_device_eval_batch_size):
                recon, loss = model(eval_data[i : i + args.per_device_eval_batch_size])
                ev.append(loss.item() * len(recon))
            eval_loss = float(np.sum(ev) / len(eval_data))
            if args.gallery_res:
                recon, _ = model(eval_data[:16])
                frames.append(gallery(recon, args.gallery_res))
        if scheduler is not None:
            scheduler.step()
        mlflow.log_metrics(
            {"train_epoch_loss": train_loss, "eval_epoch_loss": eval_loss}, step=epoch
        )
        print(
            f"Training of epoch {epoch}/{args.num_epochs}\n--------------------------------------------------------------------------\n"
            f"Train loss: {np.round(train_loss, 4)}\nEval loss: {np.round(eval_loss, 4)}\n"
            "--------------------------------------------------------------------------",
            flush=True,
        )
        if eval_loss < best:
            best = eval_loss
            print("New best model on eval saved!", flush=True)
    if frames:
        print(f"Writing reconstruction animation ({len(frames)} frames)", flush=True)
    print("Training ended!\nSaved final model in dummy_output_dir/final_model", flush=True)
