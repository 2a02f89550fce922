"""A one-object detector trained by Detectron2's ``SimpleTrainer``/``DefaultTrainer`` loop, its
``EventStorage`` scalars mirrored to MLflow by a writer in the ``PeriodicWriter`` hook.

Plain torch + the plain ``mlflow`` API (no Detectron2 here).  Each "image" is a digit
(scikit-learn's 8x8 digits, upsampled to 16x16 and scaled to 0..255) with one box around its
ink; the model has a classification head (``loss_cls``) and a box-regression head
(``loss_box_reg``, smooth L1).  The yacs config is logged flattened as params
(``SOLVER.BASE_LR``, ``SOLVER.IMS_PER_BATCH``, ...).  Every 20 iterations the writer writes
``storage.latest_with_smoothing_hint(20)`` with ``step = iteration`` (from 0): ``total_loss``,
``loss_cls``, ``loss_box_reg``, ``data_time`` (medians over the window), ``time``, ``lr`` and
``eta_seconds`` (latest).  Every ``TEST.EVAL_PERIOD`` iterations and at the end the EvalHook
writes ``bbox/AP``, ``bbox/AP50``, ``bbox/AP75`` (one detection per image: the share of images
whose class is right and whose box passes the IoU threshold, averaged over IoU 0.50:0.95, in
percent) and a ``LossEvalHook``'s ``validation_loss``.  As in Detectron2, a non-finite loss
raises ``FloatingPointError`` in ``_write_metrics``.  Written without looking at the doctor.

Faults are real settings: ``--SOLVER.BASE_LR`` far too high; ``--MODEL.PIXEL_STD 1`` with
``--SOLVER.AMP.ENABLED 1`` (float16 autocast overflows); ``--INPUT.MIN_SIZE_TRAIN`` far too
large (the resize cannot be allocated); ``--MODEL.ROI_HEADS.NUM_CLASSES`` smaller than the
dataset's classes (the loss indexes past the head).
"""

import datetime
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--SEED": ("seed", 0),
        "--SOLVER.BASE_LR": ("base_lr", 0.02),
        "--SOLVER.MOMENTUM": ("momentum", 0.9),
        "--SOLVER.WEIGHT_DECAY": ("weight_decay", 1e-4),
        "--SOLVER.IMS_PER_BATCH": ("ims_per_batch", 16),
        "--SOLVER.MAX_ITER": ("max_iter", 600),
        "--SOLVER.WARMUP_ITERS": ("warmup_iters", 50),
        "--SOLVER.WARMUP_FACTOR": ("warmup_factor", 0.001),
        "--SOLVER.STEPS": ("steps", "400,520"),
        "--SOLVER.GAMMA": ("gamma", 0.1),
        "--SOLVER.LR_SCHEDULER_NAME": ("scheduler", "WarmupMultiStepLR"),
        "--SOLVER.AMP.ENABLED": ("amp", 0),
        "--SOLVER.CLIP_GRADIENTS.ENABLED": ("clip", 0),
        "--SOLVER.CLIP_GRADIENTS.CLIP_VALUE": ("clip_value", 1.0),
        "--MODEL.PIXEL_MEAN": ("pixel_mean", 80.0),
        "--MODEL.PIXEL_STD": ("pixel_std", 100.0),
        "--MODEL.ROI_HEADS.NUM_CLASSES": ("num_classes", 10),
        "--MODEL.BACKBONE.WIDTH": ("width", 32),
        "--INPUT.MIN_SIZE_TRAIN": ("min_size_train", 16),
        "--DATASETS.TEST_SIZE": ("test_size", 300),
        "--TEST.EVAL_PERIOD": ("eval_period", 100),
    }
)
rng = _setup.seeded(args.seed)
X, y = load_digits(return_X_y=True)
imgs = np.kron(X.reshape(-1, 8, 8), np.ones((2, 2))).astype(np.float32) * (255.0 / 16.0)
boxes = np.zeros((len(imgs), 4), np.float32)  # x0, y0, x1, y1 of the ink, in [0, 1]
for i, im in enumerate(imgs):
    ys, xs = np.nonzero(im > 64)
    boxes[i] = [xs.min() / 16, ys.min() / 16, (xs.max() + 1) / 16, (ys.max() + 1) / 16]
order = rng.permutation(len(imgs))
te, tr = order[: args.test_size], order[args.test_size :]


class Detector(torch.nn.Module):
    def __init__(self, w, k):
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(1, w, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(w, w, 3, padding=1, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(w, 2 * w, 3, padding=1, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
        )
        self.cls_score = torch.nn.Linear(8 * w, k)
        self.bbox_pred = torch.nn.Linear(8 * w, 4)

    def forward(self, x):
        h = self.backbone(x)
        return self.cls_score(h), torch.sigmoid(self.bbox_pred(h))


model = Detector(args.width, args.num_classes)
opt = torch.optim.SGD(
    model.parameters(), lr=args.base_lr, momentum=args.momentum, weight_decay=args.weight_decay
)
steps = [int(s) for s in args.steps.split(",") if s]


def lr_at(it):  # WarmupMultiStepLR / WarmupCosineLR with linear warm-up
    warm = 1.0
    if it < args.warmup_iters:
        alpha = it / args.warmup_iters
        warm = args.warmup_factor * (1 - alpha) + alpha
    if args.scheduler == "WarmupCosineLR":
        return args.base_lr * warm * 0.5 * (1 + np.cos(np.pi * it / args.max_iter))
    return args.base_lr * warm * args.gamma ** sum(it >= s for s in steps)


def mapper(idx):  # DatasetMapper: read, ResizeShortestEdge, normalise
    x = torch.from_numpy(imgs[idx])[:, None]
    if args.min_size_train != 16:
        x = F.interpolate(x, size=(args.min_size_train, args.min_size_train), mode="nearest")
    return (
        (x - args.pixel_mean) / args.pixel_std,
        torch.from_numpy(y[idx]),
        torch.from_numpy(boxes[idx]),
    )


def losses_of(x, cls, box):
    with torch.autocast("cpu", dtype=torch.float16, enabled=bool(args.amp)):
        logits, pred = model(x)
        if args.amp:
            logits = logits.half()  # the autocast region's float16 output
    loss_cls = F.cross_entropy(logits.float(), cls.long())
    loss_box_reg = F.smooth_l1_loss(pred.float() * 16, box * 16, beta=0.5)
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}, logits, pred


def iou(a, b):
    x0, y0 = torch.maximum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1])
    x1, y1 = torch.minimum(a[:, 2], b[:, 2]), torch.minimum(a[:, 3], b[:, 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    area = lambda r: (r[:, 2] - r[:, 0]).clamp(min=0) * (r[:, 3] - r[:, 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter + 1e-9)


def evaluate():
    model.eval()
    with torch.no_grad():
        x, cls, box = mapper(te)
        loss_dict, logits, pred = losses_of(x, cls, box)
        right = logits.argmax(1) == cls
        ious = iou(pred.float(), box)
        ap = [float((right & (ious >= t)).float().mean()) * 100 for t in np.arange(0.5, 0.96, 0.05)]
    model.train()
    return {
        "bbox/AP": float(np.mean(ap)),
        "bbox/AP50": ap[0],
        "bbox/AP75": ap[5],
        "validation_loss": float(sum(loss_dict.values())),
    }


with mlflow.start_run():
    mlflow.log_params(
        {
            "SEED": args.seed,
            "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
            "MODEL.BACKBONE.NAME": "build_resnet_backbone",
            "MODEL.PIXEL_MEAN": f"[{args.pixel_mean}]",
            "MODEL.PIXEL_STD": f"[{args.pixel_std}]",
            "MODEL.ROI_HEADS.NUM_CLASSES": args.num_classes,
            "DATASETS.TRAIN": "('digits_train',)",
            "DATASETS.TEST": "('digits_val',)",
            "INPUT.MIN_SIZE_TRAIN": f"({args.min_size_train},)",
            "SOLVER.BASE_LR": args.base_lr,
            "SOLVER.MOMENTUM": args.momentum,
            "SOLVER.WEIGHT_DECAY": args.weight_decay,
            "SOLVER.IMS_PER_BATCH": args.ims_per_batch,
            "SOLVER.MAX_ITER": args.max_iter,
            "SOLVER.WARMUP_ITERS": args.warmup_iters,
            "SOLVER.WARMUP_FACTOR": args.warmup_factor,
            "SOLVER.STEPS": f"({args.steps})",
            "SOLVER.GAMMA": args.gamma,
            "SOLVER.LR_SCHEDULER_NAME": args.scheduler,
            "SOLVER.AMP.ENABLED": bool(args.amp),
            "SOLVER.CLIP_GRADIENTS.ENABLED": bool(args.clip),
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": args.clip_value,
            "TEST.EVAL_PERIOD": args.eval_period,
        }
    )
    print(
        f"[d2.engine.train_loop]: Starting training from iteration 0 ({len(tr)} images)", flush=True
    )
    window = {"total_loss": [], "loss_cls": [], "loss_box_reg": [], "data_time": []}
    start = time.perf_counter()
    perm, pos = rng.permutation(tr), 0
    for it in range(args.max_iter):
        t0 = time.perf_counter()
        if pos + args.ims_per_batch > len(perm):  # TrainingSampler: an endless shuffled stream
            perm, pos = rng.permutation(tr), 0
        idx = perm[pos : pos + args.ims_per_batch]
        pos += args.ims_per_batch
        x, cls, box = mapper(idx)
        data_time = time.perf_counter() - t0
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        loss_dict, _, _ = losses_of(x, cls, box)
        losses = sum(loss_dict.values())
        opt.zero_grad()
        losses.backward()
        if args.clip:
            torch.nn.utils.clip_grad_value_(model.parameters(), args.clip_value)
        opt.step()
        vals = {k: v.item() for k, v in loss_dict.items()}
        total = sum(vals.values())
        if not np.isfinite(total):  # SimpleTrainer._write_metrics
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={it}!\nloss_dict = {vals}"
            )
        window["total_loss"].append(total)
        window["data_time"].append(data_time)
        for k, v in vals.items():
            window[k].append(v)
        iter_time = time.perf_counter() - t0
        if (it + 1) % 20 == 0 or it == args.max_iter - 1:  # PeriodicWriter, period 20
            med = {k: float(np.median(v[-20:])) for k, v in window.items()}
            eta = iter_time * (args.max_iter - it - 1)
            mlflow.log_metrics(
                {**med, "time": iter_time, "lr": lr_at(it), "eta_seconds": eta}, step=it
            )
            print(
                f"[d2.utils.events]:  eta: {datetime.timedelta(seconds=int(eta))}  iter: {it}  "
                f"total_loss: {med['total_loss']:.4g}  loss_cls: {med['loss_cls']:.4g}  "
                f"loss_box_reg: {med['loss_box_reg']:.4g}  time: {iter_time:.4f}  "
                f"data_time: {med['data_time']:.4f}  lr: {lr_at(it):.5g}",
                flush=True,
            )
        if (it + 1) % args.eval_period == 0 or it == args.max_iter - 1:  # EvalHook
            res = evaluate()
            mlflow.log_metrics(res, step=it)
            print(f"[d2.evaluation.testing]: copypaste: {res}", flush=True)
    print(f"[d2.engine.hooks]: Total training time: {time.perf_counter() - start:.1f}s", flush=True)
