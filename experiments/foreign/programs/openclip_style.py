"""A small CLIP (image tower + text tower, contrastive loss) trained as OpenCLIP's
``open_clip_train/main.py`` trains one, its W&B log mirrored to MLflow name for name.

Plain PyTorch + numpy + the plain ``mlflow`` API (no open_clip, no W&B here).  What is
imitated, as ``train_one_epoch`` and ``evaluate`` log it:

* every ``log_every_n_steps`` batches and at an epoch's last batch: ``log_data`` with
  ``data_time``, ``batch_time`` (meters' last values), ``samples_per_second``,
  ``samples_per_second_per_gpu``, ``scale`` (``logit_scale.exp()``), ``lr`` and the losses
  (``loss``, ``contrastive_loss``: the batch's value, not the average), prefixed ``train/``,
  plus ``step``; ``wandb.log(log_data, step=step)`` with ``step = num_batches_per_epoch *
  epoch + i`` (from 0), mirrored with ``mlflow.log_metrics(..., step=step)``;
* after each epoch (``completed_epoch``, every ``val_frequency`` epochs): ``evaluate``'s
  ``val/clip_val_loss`` (mean over val batches), ``val/image_to_text_mean_rank``,
  ``val/image_to_text_median_rank``, ``val/image_to_text_R@{1,5,10}`` and the same for
  ``text_to_image`` over the whole val set, ``val/epoch``, ``val/num_samples``, and the
  zero-shot classification top-1/top-5 (``zeroshot_frequency``), logged at
  ``step = num_batches_per_epoch * completed_epoch`` with ``epoch`` (the team's W&B-to-MLflow
  mirror writes ``@`` as ``_at_``, which MLflow names need: ``val/image_to_text_R_at_1``);
* OpenCLIP's recipe: AdamW (betas 0.9/0.98, eps 1e-6), weight decay on weights only (not on
  gains, biases or ``logit_scale``), ``cosine_lr`` with ``warmup`` steps, ``logit_scale``
  initialised to ln(1/0.07) and clamped to [0, ln 100] after every step, features
  L2-normalised, the symmetric InfoNCE ``ClipLoss``; its ``Train Epoch: ...`` log lines.

Data: scikit-learn's bundled digits (8x8 images) with generated captions (a template, the
digit's name and words for the stroke's weight and slant), written as a CSV (``id``,
``row``, ``caption``) beside an ``images.npy``, as ``CsvDataset`` reads them (``csv_img_key``,
``csv_caption_key``).  Text tower: word embeddings averaged, then a projection; image tower:
an MLP.  Written without looking at the doctor.

Faults are real code paths and arguments: ``--lr`` typed three orders too high;
``--csv_img_key row``: the export's row-number column (numbered after the rows were sorted by
caption), so captions no longer belong to their images; ``--log_seen_samples 1``: the team's
sample audit keeps a record (a dataclass) of every sample seen in a list and checks
membership before appending;
``--zeroshot_templates team``: the team's template set written with ``{classname}`` where
the code formats ``{c}``.
"""

import csv
import math
import os
import tempfile
import time
from dataclasses import dataclass

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--epochs": 12,
        "--batch_size": 64,
        "--lr": 5e-4,
        "--wd": 0.2,
        "--beta1": 0.9,
        "--beta2": 0.98,
        "--eps": 1e-6,
        "--warmup": 50,
        "--embed_dim": 64,
        "--width": 128,
        "--log_every_n_steps": 10,
        "--val_frequency": 1,
        "--zeroshot_frequency": 2,
        "--zeroshot_templates": "simple",
        "--val_fraction": 0.2,
        "--csv_img_key": "id",
        "--csv_caption_key": "caption",
        "--log_seen_samples": 0,
        "--grad_clip_norm": 0.0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data (CSV)
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a photo of the number {}", "a handwritten {}", "the digit {} written by hand",
    "a scan of a {}", "a {} on a form", "a small picture of {}",
]  # fmt: skip
digits = load_digits()
X = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
y = digits.target
data_dir = tempfile.mkdtemp(prefix="openclip-")
np.save(os.path.join(data_dir, "images.npy"), X)
cols = np.arange(8)
rows_out = []
for i in range(len(X)):
    img = X[i]
    ink = img.sum()
    weight = "bold" if ink > 32 else ("thin" if ink < 24 else "plain")
    cx = (img.sum(0) * cols).sum() / max(ink, 1e-6)
    top = (img[:4].sum() - img[4:].sum()) / max(ink, 1e-6)
    slant = "leaning left" if cx < 3.3 else ("leaning right" if cx > 3.9 else "upright")
    height = "top heavy" if top > 0.1 else ("bottom heavy" if top < -0.1 else "balanced")
    t = TEMPLATES[rng.integers(len(TEMPLATES))].format(NAMES[y[i]])
    rows_out.append((i, f"{t} {weight} {slant} {height}"))
# the export sorts the rows by caption for its dedup pass, then numbers them
rows_out.sort(key=lambda t: t[1])
numbered = [(r, i, c) for r, (i, c) in enumerate(rows_out)]
with open(os.path.join(data_dir, "train.csv"), "w", newline="") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(["row", "id", "caption"])
    w.writerows(numbered)
print(f"wrote {len(numbered)} rows to {data_dir}/train.csv", flush=True)


class CsvDataset:
    def __init__(self, path, img_key, caption_key):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        images = np.load(os.path.join(os.path.dirname(path), "images.npy"))
        self.index = np.array([int(r[img_key]) for r in rows])
        self.images = images[self.index]
        self.captions = [r[caption_key] for r in rows]
        print(f"Loaded {len(rows)} rows ({img_key}, {caption_key}) from {path}", flush=True)


ds = CsvDataset(os.path.join(data_dir, "train.csv"), args.csv_img_key, args.csv_caption_key)
vocab = {"<pad>": 0, "<unk>": 1}
for c in ds.captions:
    for wd in c.split():
        vocab.setdefault(wd, len(vocab))
CTX = 16


def tokenize(texts):
    out = torch.zeros(len(texts), CTX, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [vocab.get(wd, 1) for wd in t.split()][:CTX]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


perm = rng.permutation(len(ds.images))
n_val = int(len(perm) * args.val_fraction)
val_idx, train_idx = perm[:n_val], perm[n_val:]
img_all = torch.tensor(ds.images).reshape(len(ds.images), -1)
tok_all = tokenize(ds.captions)
lab_all = torch.tensor(y[ds.index])  # the zero-shot labels of the images


# ----------------------------------------------------------------------------- model
class CLIP(nn.Module):
    def __init__(self):
        super().__init__()
        d, w = args.embed_dim, args.width
        self.visual = nn.Sequential(
            nn.Linear(64, w), nn.GELU(), nn.LayerNorm(w), nn.Linear(w, w), nn.GELU(),
            nn.Linear(w, d),
        )  # fmt: skip
        self.token_embedding = nn.Embedding(len(vocab), w, padding_idx=0)
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, d))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_image(self, x):
        return F.normalize(self.visual(x), dim=-1)

    def encode_text(self, t):
        mask = (t != 0).float().unsqueeze(-1)
        x = (self.token_embedding(t) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return F.normalize(self.text_projection(self.ln_final(x)), dim=-1)

    def forward(self, image, text):
        return self.encode_image(image), self.encode_text(text), self.logit_scale.exp()


def clip_loss(img_f, txt_f, scale):
    logits_per_image = scale * img_f @ txt_f.T
    labels = torch.arange(len(img_f))
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)
    ) / 2


model = CLIP()


def exclude(n, p):  # open_clip's: no weight decay on gains, biases and logit_scale
    return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n


named = list(model.named_parameters())
optimizer = torch.optim.AdamW(
    [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": args.wd},
    ],
    lr=args.lr,
    betas=(args.beta1, args.beta2),
    eps=args.eps,
)
num_batches_per_epoch = len(train_idx) // args.batch_size
total_steps = num_batches_per_epoch * args.epochs


def cosine_lr(step):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    e, es = step - args.warmup, total_steps - args.warmup
    return 0.5 * (1 + math.cos(math.pi * e / es)) * args.lr


ZS_TEMPLATES = {
    "simple": ["a photo of the number {c}", "a handwritten {c}", "the digit {c}"],
    "team": ["a photo of the number {c}", "a scan of a {classname}", "a {c} on a form"],
}


@torch.no_grad()
def zero_shot(vi):
    classifier = []
    for c in NAMES:
        texts = [t.format(c=c) for t in ZS_TEMPLATES[args.zeroshot_templates]]
        emb = model.encode_text(tokenize(texts)).mean(0)
        classifier.append(F.normalize(emb, dim=-1))
    logits = model.encode_image(img_all[vi]) @ torch.stack(classifier).T
    top5 = logits.topk(5, dim=1).indices
    target = lab_all[vi]
    top1 = (top5[:, 0] == target).float().mean().item()
    return top1, (top5 == target[:, None]).any(1).float().mean().item()


@torch.no_grad()
def evaluate(completed_epoch):
    model.eval()
    metrics, losses, feats_i, feats_t = {}, [], [], []
    for s in range(0, len(val_idx), args.batch_size):
        vi = val_idx[s : s + args.batch_size]
        fi, ft, scale = model(img_all[vi], tok_all[vi])
        losses.append(clip_loss(fi, ft, scale).item() * len(vi))
        feats_i.append(fi)
        feats_t.append(ft)
    fi, ft = torch.cat(feats_i), torch.cat(feats_t)
    logits = {"image_to_text": fi @ ft.T, "text_to_image": ft @ fi.T}
    gt = torch.arange(len(fi)).view(-1, 1)
    for name, logit in logits.items():
        ranking = torch.argsort(logit, descending=True)
        preds = torch.where(ranking == gt)[1].numpy()
        metrics[f"{name}_mean_rank"] = preds.mean() + 1
        metrics[f"{name}_median_rank"] = np.floor(np.median(preds)) + 1
        for k in [1, 5, 10]:
            metrics[f"{name}_R@{k}"] = np.mean(preds < k)
    metrics["clip_val_loss"] = sum(losses) / len(val_idx)
    metrics["epoch"] = completed_epoch
    metrics["num_samples"] = len(val_idx)
    if args.zeroshot_frequency and (
        completed_epoch % args.zeroshot_frequency == 0 or completed_epoch == args.epochs
    ):
        print("Starting zero-shot digits.", flush=True)
        top1, top5 = zero_shot(val_idx)
        metrics["digits-zeroshot-val-top1"], metrics["digits-zeroshot-val-top5"] = top1, top5
        print("Finished zero-shot digits.", flush=True)
    model.train()
    print(
        f"Eval Epoch: {completed_epoch} "
        + "\t".join(f"{k}: {round(float(v), 4):.4f}" for k, v in metrics.items()),
        flush=True,
    )
    log_data = {"val/" + k.replace("@", "_at_"): float(v) for k, v in metrics.items()}
    log_data["epoch"] = completed_epoch
    mlflow.log_metrics(log_data, step=num_batches_per_epoch * completed_epoch)


@dataclass
class SampleRecord:  # the team's sample audit: which samples each epoch saw
    epoch: int
    index: int
    caption: str


# ----------------------------------------------------------------------------- main.py
with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params({"model": "digits-clip-mlp", "precision": "fp32", "workers": 0})
    params = sum(p.numel() for p in model.parameters())
    print(f"Model: {params} parameters, {len(train_idx)} train / {len(val_idx)} val", flush=True)
    seen_samples = []  # the team's sample audit
    for epoch in range(args.epochs):
        print(f"Start epoch {epoch}", flush=True)
        order = rng.permutation(train_idx)
        end = time.time()
        losses_sum, losses_n = 0.0, 0
        for i in range(num_batches_per_epoch):
            step = num_batches_per_epoch * epoch + i
            lr = cosine_lr(step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            bi = order[i * args.batch_size : (i + 1) * args.batch_size]
            images = img_all[bi] + 0.05 * torch.randn(len(bi), 64)  # augmentation
            texts = tok_all[bi]
            if args.log_seen_samples:
                for j in bi:
                    rec = SampleRecord(epoch, int(j), ds.captions[j])
                    if rec not in seen_samples:
                        seen_samples.append(rec)
            data_time = time.time() - end
            img_f, txt_f, scale = model(images, texts)
            loss = clip_loss(img_f, txt_f, scale)
            optimizer.zero_grad()
            loss.backward()
            if args.grad_clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            batch_time = time.time() - end
            end = time.time()
            losses_sum, losses_n = losses_sum + loss.item(), losses_n + 1
            batch_count = i + 1
            if i % args.log_every_n_steps == 0 or batch_count == num_batches_per_epoch:
                n_done = batch_count * args.batch_size
                sps = args.batch_size / batch_time
                scale_v = model.logit_scale.exp().item()
                print(
                    f"Train Epoch: {epoch} [{n_done:>5}/{len(train_idx)} "
                    f"({100.0 * batch_count / num_batches_per_epoch:.0f}%)] "
                    f"Data (t): {data_time:.3f} Batch (t): {batch_time:.3f}, {sps:#g}/s, "
                    f"{sps:#g}/s/gpu LR: {lr:5f} Logit Scale: {scale_v:.3f} "
                    f"Contrastive_loss: {loss.item():#.5g} ({losses_sum / losses_n:#.5g}) "
                    f"Loss: {loss.item():#.5g} ({losses_sum / losses_n:#.5g})",
                    flush=True,
                )
                log_data = {
                    "data_time": data_time,
                    "batch_time": batch_time,
                    "samples_per_second": sps,
                    "samples_per_second_per_gpu": sps,
                    "scale": scale_v,
                    "lr": lr,
                    "contrastive_loss": loss.item(),
                    "loss": loss.item(),
                }
                log_data = {"train/" + k: v for k, v in log_data.items()}
                log_data["step"] = step
                mlflow.log_metrics(log_data, step=step)
        completed_epoch = epoch + 1
        if args.val_frequency and completed_epoch % args.val_frequency == 0:
            evaluate(completed_epoch)
