"""A tiny anchor-free detector trained as Megvii's YOLOX ``tools/train.py -l mlflow`` trains one:
its ``Trainer`` with the ``MlflowLogger`` of ``yolox/utils/mlflow_logger.py``.

Plain PyTorch + numpy + the plain ``mlflow`` API (no YOLOX, no pycocotools here).  What is
imitated:

* the ``Exp``: ``num_classes``, the ``width`` multiplier, ``max_epoch``,
  ``warmup_epochs``, ``no_aug_epochs``, ``basic_lr_per_img`` (the lr is ``basic_lr_per_img *
  batch_size``), ``min_lr_ratio``, ``scheduler = "yoloxwarmcos"`` (a quadratic warm-up from 0
  over ``warmup_epochs``, a cosine to ``min_lr_ratio * lr``, the minimum held through the last
  ``no_aug_epochs``), SGD (momentum 0.9, nesterov, ``weight_decay`` 5e-4 on weights only),
  ``mosaic_prob``, ``flip_prob``, ``eval_interval``, ``print_interval``, ``ema``
  (``ModelEMA``, decay ``0.9998 * (1 - exp(-updates / 2000))``), ``test_conf`` 0.01, ``nmsthre``
  0.65;
* ``YOLOXHead``: decoupled class and regression/objectness branches on one stride-4 level,
  boxes decoded as ``(grid + xy) * stride`` and ``exp(wh) * stride``; the losses as
  ``get_losses`` returns them: ``iou_loss`` = ``reg_weight`` (5.0) x the summed ``1 - IoU**2``
  over foreground anchors / ``num_fg``, ``conf_loss`` (objectness BCE over all anchors / ``num_fg``),
  ``cls_loss`` (BCE against ``one_hot * IoU`` on foreground anchors / ``num_fg``), ``l1_loss``
  (0.0 until ``use_l1`` is switched on with the no-augmentation epochs), ``total_loss`` their sum;
  a SimOTA-like assignment (candidates whose centres fall inside the box or within 2.5 strides of
  its centre, ``dynamic_k`` from the top IoUs, the lowest cost winning an anchor claimed twice);
* the ``Trainer``: ``MeterBuffer`` meters, every ``print_interval`` iterations
  ``self.mlflow_logger.on_log(self.args, self.exp, self.epoch + 1, logs)`` with ``logs`` =
  ``{"train/" + k: v.latest}`` for the meters with ``loss`` in their name (``train/total_loss``,
  ``train/iou_loss``, ``train/l1_loss``, ``train/conf_loss``, ``train/cls_loss``) and
  ``train/lr``: so every value of an epoch is logged at the same ``step = epoch + 1``;
  ``close_mosaic`` and ``use_l1`` at ``max_epoch - no_aug_epochs`` (evaluation every epoch from
  then on); ``evaluate_and_save_model`` every ``eval_interval`` epochs on the EMA model:
  ``val/COCOAP50``, ``val/COCOAP50_95``, ``val/best_ap`` and ``train/epoch`` at ``step =
  epoch + 1`` (COCO-style AP: 101-point interpolation, IoU 0.50:0.95, averaged over classes).

Data: generated 32 x 32 RGB images of 1-3 objects (square, disc, cross) on a textured
background, COCO-style ``[x, y, w, h]`` annotations; ``n_train`` / ``n_val`` images.  The
annotation team's second delivery (``--extra_ann_epoch``: ``--extra_ann_images`` more images
merged into the training set when that epoch starts) comes as ``--extra_ann_format`` (``coco``
pixels, or ``yolo``: normalised ``cx cy w h`` in [0, 1], which the team's ``COCODataset`` reads
as pixels unless converted with ``--convert_yolo``), its ``category_id`` values counted from
``--extra_ann_category_base``; the ``COCODataset`` maps a ``category_id`` to a class with
``self.class_ids.index(category_id)``, ``class_ids`` being the first delivery's (0, 1, 2).
``--head`` picks the team's ``YOLOXHead`` (``yolox``) or its export-friendly rewrite
(``export``), whose L1 branch sizes its targets off the raw regression outputs.  Written without
looking at the doctor.

Faults are real settings and data: ``--basic_lr_per_img``; ``--head``; ``--extra_ann_format``
with ``--extra_ann_images``; ``--extra_ann_category_base``.
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_train": 384,
        "--n_val": 128,
        "--num_classes": 3,
        "--width": 1.0,
        "--batch_size": 16,
        "--max_epoch": 20,
        "--warmup_epochs": 3,
        "--no_aug_epochs": 4,
        "--basic_lr_per_img": 0.04 / 64,
        "--min_lr_ratio": 0.05,
        "--mosaic_prob": 0.5,
        "--flip_prob": 0.5,
        "--eval_interval": 4,
        "--print_interval": 8,
        "--ema": 1,
        "--head": "yolox",  # yolox | export
        "--extra_ann_epoch": 0,  # 0: no second annotation delivery
        "--extra_ann_images": 256,
        "--extra_ann_format": "coco",  # coco | yolo
        "--convert_yolo": 0,
        "--extra_ann_category_base": 0,  # the delivery's first category_id
    }
)
rng = _setup.seeded(args.seed)
S, STRIDE, G = 32, 4, 8  # image size, the head's stride, grid cells a side
NC = args.num_classes


# ----------------------------------------------------------------------------- data
def make_images(n, seed):
    g = np.random.default_rng(seed)
    imgs = np.zeros((n, 3, S, S), np.float32)
    anns = []
    yy, xx = np.mgrid[0:S, 0:S]
    for i in range(n):
        bg = g.uniform(0.0, 0.35, 3)[:, None, None] + g.normal(0, 0.06, (3, S, S))
        img = bg.astype(np.float32)
        boxes = []
        for _ in range(g.integers(1, 4)):
            c = int(g.integers(0, NC))
            w, h = g.uniform(6, 14, 2)
            x0, y0 = g.uniform(0, S - w), g.uniform(0, S - h)
            cx, cy = x0 + w / 2, y0 + h / 2
            inside = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
            if c == 1:  # disc
                inside &= ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1
            elif c == 2:  # cross
                inside &= (np.abs(xx - cx) < w / 6) | (np.abs(yy - cy) < h / 6)
            colour = g.uniform(0.55, 1.0, 3)
            img[:, inside] = colour[:, None]
            boxes.append([x0, y0, w, h, c])
        imgs[i] = np.clip(img, 0, 1)
        anns.append(np.array(boxes, np.float32))
    return imgs, anns


def to_xyxy(ann):  # COCODataset.load_anno_from_ids: [x, y, w, h] -> [x1, y1, x2, y2, cls]
    a = ann.copy()
    a[:, 2] = a[:, 0] + a[:, 2]
    a[:, 3] = a[:, 1] + a[:, 3]
    return a


train_imgs, train_anns = make_images(args.n_train, 100)
val_imgs, val_anns = make_images(args.n_val, 200)
train_anns = [to_xyxy(a) for a in train_anns]
val_anns = [to_xyxy(a) for a in val_anns]
extra_imgs, extra_anns = make_images(args.extra_ann_images, 300)
if args.extra_ann_format == "yolo":  # the export: normalised cx, cy, w, h
    ys = []
    for a in extra_anns:
        b = a.copy()
        b[:, 0] = (a[:, 0] + a[:, 2] / 2) / S
        b[:, 1] = (a[:, 1] + a[:, 3] / 2) / S
        b[:, 2] = a[:, 2] / S
        b[:, 3] = a[:, 3] / S
        if args.convert_yolo:  # back to COCO pixels
            b[:, 0], b[:, 1] = (b[:, 0] - b[:, 2] / 2) * S, (b[:, 1] - b[:, 3] / 2) * S
            b[:, 2], b[:, 3] = b[:, 2] * S, b[:, 3] * S
        ys.append(b)
    extra_anns = ys
extra_anns = [to_xyxy(a) for a in extra_anns]
for a in extra_anns:  # the delivery's JSON category_ids
    a[:, 4] += args.extra_ann_category_base
CLASS_IDS = list(range(NC))  # COCODataset: sorted(coco.getCatIds()) of the first delivery


def load_anno(ann):  # COCODataset.load_anno_from_ids: cls = self.class_ids.index(category_id)
    a = ann.copy()
    a[:, 4] = [CLASS_IDS.index(int(c)) for c in ann[:, 4]]
    return a


def mosaic(idx_pool):
    """Mosaic: four images, each downscaled by two, one a quadrant; boxes scaled with them."""
    img = np.zeros((3, S, S), np.float32)
    boxes = []
    for q in range(4):
        k = idx_pool[rng.integers(len(idx_pool))]
        src, ann = pool_imgs[k], pool_anns[k]
        small = src.reshape(3, S // 2, 2, S // 2, 2).mean((2, 4))
        oy, ox = (q // 2) * S // 2, (q % 2) * S // 2
        img[:, oy : oy + S // 2, ox : ox + S // 2] = small
        b = ann.copy()
        b[:, [0, 2]] = b[:, [0, 2]] / 2 + ox
        b[:, [1, 3]] = b[:, [1, 3]] / 2 + oy
        boxes.append(b)
    return img, np.concatenate(boxes)


def flip(img, boxes):
    if rng.uniform() < args.flip_prob:
        img = img[:, :, ::-1].copy()
        boxes = boxes.copy()
        boxes[:, [0, 2]] = S - boxes[:, [2, 0]]
    return img, boxes


# ----------------------------------------------------------------------------- model
def conv(cin, cout, s=1):
    return torch.nn.Sequential(
        torch.nn.Conv2d(cin, cout, 3, s, 1, bias=False),
        torch.nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03),
        torch.nn.SiLU(),
    )


class YOLOX(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        c = int(32 * width)
        self.backbone = torch.nn.Sequential(conv(3, c // 2, 2), conv(c // 2, c), conv(c, c, 2))
        self.neck = conv(c, c)
        self.cls_convs = conv(c, c)
        self.reg_convs = conv(c, c)
        self.cls_pred = torch.nn.Conv2d(c, NC, 1)
        self.reg_pred = torch.nn.Conv2d(c, 4, 1)
        self.obj_pred = torch.nn.Conv2d(c, 1, 1)
        prior = -math.log((1 - 0.01) / 0.01)
        torch.nn.init.constant_(self.cls_pred.bias, prior)
        torch.nn.init.constant_(self.obj_pred.bias, prior)
        self.use_l1 = False

    def forward(self, x):
        f = self.neck(self.backbone(x))
        cf, rf = self.cls_convs(f), self.reg_convs(f)
        reg = self.reg_pred(rf)  # (B, 4, G, G)
        out = torch.cat([reg, self.obj_pred(rf), self.cls_pred(cf)], 1)
        return out.flatten(2).permute(0, 2, 1), reg  # (B, G*G, 5 + NC)


gy, gx = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
GRID = torch.stack([gx, gy], -1).reshape(-1, 2).float()
CENTRES = (GRID + 0.5) * STRIDE


def decode(out):
    xy = (out[..., :2] + GRID) * STRIDE
    wh = torch.exp(out[..., 2:4]) * STRIDE
    return torch.cat([xy, wh], -1)  # cx, cy, w, h


def iou_cxcywh(a, b):
    a1, a2 = a[..., :2] - a[..., 2:4] / 2, a[..., :2] + a[..., 2:4] / 2
    b1, b2 = b[..., :2] - b[..., 2:4] / 2, b[..., :2] + b[..., 2:4] / 2
    tl, br = torch.max(a1, b1), torch.min(a2, b2)
    inter = (br - tl).clamp(min=0).prod(-1)
    area_a, area_b = a[..., 2:4].prod(-1), b[..., 2:4].prod(-1)
    return inter / (area_a + area_b - inter + 1e-16)


def assign(boxes_pred, gts):
    """SimOTA-like: (fg mask over anchors, matched gt index per anchor)."""
    n_anchor = boxes_pred.shape[0]
    gt_c = (gts[:, :2] + gts[:, 2:4]) / 2
    gt_wh = gts[:, 2:4] - gts[:, :2]
    gt = torch.cat([gt_c, gt_wh], 1)
    in_box = (
        (CENTRES[None, :, 0] > gts[:, None, 0])
        & (CENTRES[None, :, 0] < gts[:, None, 2])
        & (CENTRES[None, :, 1] > gts[:, None, 1])
        & (CENTRES[None, :, 1] < gts[:, None, 3])
    )
    in_ctr = (CENTRES[None] - gt_c[:, None]).abs().max(-1).values < 2.5 * STRIDE
    cand = in_box | in_ctr
    ious = iou_cxcywh(gt[:, None], boxes_pred[None].detach())  # (n_gt, n_anchor)
    cost = -torch.log(ious + 1e-8) * 3.0 + 1e5 * (~(in_box & in_ctr)) + 1e6 * (~cand)
    matching = torch.zeros_like(cost)
    for g in range(len(gts)):
        k = int(torch.clamp(ious[g][cand[g]].topk(min(10, int(cand[g].sum()))).values.sum(), min=1))
        k = min(k, int(cand[g].sum())) if cand[g].any() else 0
        if k:
            matching[g, cost[g].topk(k, largest=False).indices] = 1.0
    multi = matching.sum(0) > 1
    if multi.any():
        best = cost[:, multi].argmin(0)
        matching[:, multi] = 0.0
        matching[best, multi.nonzero()[:, 0]] = 1.0
    fg = matching.sum(0) > 0
    matched = matching.argmax(0)
    return fg, matched, gt, ious, n_anchor


def get_losses(out, reg_raw, targets):
    boxes = decode(out)
    B = out.shape[0]
    obj_t = torch.zeros(B, G * G)
    cls_ts, box_ts, l1_ts, fg_masks = [], [], [], []
    num_fg, num_gts = 0, 0
    for b in range(B):
        gts = torch.from_numpy(targets[b])
        num_gts += len(gts)
        fg, matched, gt, ious, _ = assign(boxes[b], gts[:, :4])
        num_fg += int(fg.sum())
        obj_t[b, fg] = 1.0
        m = matched[fg]
        iou_fg = ious[m, fg.nonzero()[:, 0]]
        cls_ts.append(F.one_hot(gts[m, 4].long(), NC).float() * iou_fg[:, None])
        box_ts.append(gt[m])
        fg_masks.append(fg)
        if model.use_l1:
            if args.head == "export":  # the rewrite sizes its targets off the raw outputs
                t = torch.zeros_like(reg_raw[b][fg])
            else:
                t = torch.zeros(len(m), 4)
            t[:, :2] = gt[m][:, :2] / STRIDE - GRID[fg]
            t[:, 2:] = torch.log(gt[m][:, 2:] / STRIDE + 1e-8)
            l1_ts.append(t)
    fg_all = torch.stack(fg_masks)
    num_fg = max(num_fg, 1)
    reg_weight = 5.0
    loss_iou = (1 - iou_cxcywh(boxes[fg_all], torch.cat(box_ts)) ** 2).sum() / num_fg
    loss_obj = F.binary_cross_entropy_with_logits(out[..., 4], obj_t, reduction="sum") / num_fg
    loss_cls = (
        F.binary_cross_entropy_with_logits(out[..., 5:][fg_all], torch.cat(cls_ts), reduction="sum")
        / num_fg
    )
    if model.use_l1:
        loss_l1 = F.l1_loss(out[..., :4][fg_all], torch.cat(l1_ts), reduction="sum") / num_fg
    else:
        loss_l1 = torch.tensor(0.0)
    total = reg_weight * loss_iou + loss_obj + loss_cls + loss_l1
    return {
        "total_loss": total,
        "iou_loss": reg_weight * loss_iou,
        "l1_loss": loss_l1,
        "conf_loss": loss_obj,
        "cls_loss": loss_cls,
        "num_fg": num_fg / max(num_gts, 1),
    }


# ----------------------------------------------------------------------------- evaluation
def nms(boxes, scores, thr):
    order = np.argsort(-scores)
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        if len(order) == 1:
            break
        ious = iou_cxcywh(torch.from_numpy(boxes[i][None]), torch.from_numpy(boxes[order[1:]]))
        order = order[1:][ious.numpy() <= thr]
    return keep


def coco_ap(dets, gts):
    """dets: per image (boxes cxcywh, scores, classes); gts: per image xyxy+cls arrays."""
    aps = np.zeros((10, NC))
    for t, thr in enumerate(np.linspace(0.5, 0.95, 10)):
        for c in range(NC):
            recs = []
            n_gt = 0
            for (bx, sc, cl), gt in zip(dets, gts, strict=True):
                g = gt[gt[:, 4] == c]
                n_gt += len(g)
                gc = np.stack([(g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2], 1)
                gcw = np.concatenate([gc, g[:, 2:4] - g[:, :2]], 1)
                used = np.zeros(len(g), bool)
                sel = np.flatnonzero(cl == c)
                for i in sel[np.argsort(-sc[sel])]:
                    tp = 0
                    if len(g):
                        ious = iou_cxcywh(torch.from_numpy(bx[i][None]), torch.from_numpy(gcw))
                        ious = ious.numpy()
                        ious[used] = -1
                        j = int(np.argmax(ious))
                        if ious[j] >= thr:
                            used[j], tp = True, 1
                    recs.append((sc[i], tp))
            if not recs or not n_gt:
                continue
            recs.sort(key=lambda r: -r[0])
            tps = np.cumsum([r[1] for r in recs])
            prec = tps / np.arange(1, len(recs) + 1)
            rec = tps / n_gt
            prec = np.maximum.accumulate(prec[::-1])[::-1]
            pts = np.linspace(0, 1, 101)
            idx = np.searchsorted(rec, pts, side="left")
            aps[t, c] = np.mean([prec[i] if i < len(prec) else 0.0 for i in idx])
    return float(aps.mean()), float(aps[0].mean())


def evaluate(m):
    m.eval()
    dets = []
    with torch.no_grad():
        for s in range(0, args.n_val, 64):
            out, _ = m(torch.from_numpy(val_imgs[s : s + 64]))
            boxes = decode(out).numpy()
            scores = (torch.sigmoid(out[..., 4:5]) * torch.sigmoid(out[..., 5:])).numpy()
            for b in range(len(out)):
                cls = scores[b].argmax(-1)
                sc = scores[b].max(-1)
                keep_all = []
                for c in range(NC):
                    idx = np.flatnonzero((cls == c) & (sc > 0.01))
                    if len(idx):
                        keep_all += list(idx[nms(boxes[b][idx], sc[idx], 0.65)])
                k = np.array(keep_all, int)
                dets.append((boxes[b][k], sc[k], cls[k]))
    m.train()
    return coco_ap(dets, val_anns)


# ----------------------------------------------------------------------------- training
model = YOLOX(args.width)
ema = YOLOX(args.width)
ema.load_state_dict(model.state_dict())
for p_ in ema.parameters():
    p_.requires_grad_(False)
decay_params = [p_ for n, p_ in model.named_parameters() if p_.ndim > 1]
other_params = [p_ for n, p_ in model.named_parameters() if p_.ndim <= 1]
lr = args.basic_lr_per_img * args.batch_size
optimizer = torch.optim.SGD(
    [{"params": other_params}, {"params": decay_params, "weight_decay": 5e-4}],
    lr=lr,
    momentum=0.9,
    nesterov=True,
)
pool_imgs, pool_anns = train_imgs, train_anns
max_iter = args.n_train // args.batch_size
total_iters = max_iter * args.max_epoch
warmup_total_iters = max_iter * args.warmup_epochs
no_aug_iters = max_iter * args.no_aug_epochs


def lr_at(iters):
    if iters <= warmup_total_iters:
        return lr * (iters / float(warmup_total_iters)) ** 2
    min_lr = lr * args.min_lr_ratio
    if iters >= total_iters - no_aug_iters:
        return min_lr
    return min_lr + 0.5 * (lr - min_lr) * (
        1.0
        + math.cos(
            math.pi
            * (iters - warmup_total_iters)
            / (total_iters - warmup_total_iters - no_aug_iters)
        )
    )


with mlflow.start_run():
    mlflow.log_params(vars(args))
    updates, best_ap, no_aug = 0, 0.0, False
    eval_interval = args.eval_interval
    t_start = time.time()
    for epoch in range(args.max_epoch):
        # ---- before_epoch
        if epoch + 1 == args.max_epoch - args.no_aug_epochs + 1:
            print("--->No mosaic aug now!\n--->Add additional L1 loss now!", flush=True)
            no_aug, model.use_l1, eval_interval = True, True, 1
        if args.extra_ann_epoch and epoch == args.extra_ann_epoch:
            pool_imgs = np.concatenate([pool_imgs, extra_imgs])
            pool_anns = pool_anns + [load_anno(a) for a in extra_anns]
            print(f"merged the second annotation delivery: {len(pool_anns)} images", flush=True)
        order = rng.permutation(len(pool_imgs))
        for it in range(max_iter):
            iter_start = time.time()
            imgs, targets = [], []
            for k in order[it * args.batch_size : (it + 1) * args.batch_size]:
                if not no_aug and rng.uniform() < args.mosaic_prob:
                    img, box = mosaic(order)
                else:
                    img, box = pool_imgs[k], pool_anns[k]
                img, box = flip(img, box)
                imgs.append(img)
                targets.append(box)
            inps = torch.from_numpy(np.stack(imgs))
            data_time = time.time() - iter_start
            out, reg_raw = model(inps)
            outputs = get_losses(out, reg_raw, targets)
            optimizer.zero_grad()
            outputs["total_loss"].backward()
            optimizer.step()
            updates += 1
            if args.ema:
                d = 0.9998 * (1 - math.exp(-updates / 2000))
                with torch.no_grad():
                    msd = model.state_dict()
                    for k_, v_ in ema.state_dict().items():
                        if v_.dtype.is_floating_point:
                            v_.mul_(d).add_(msd[k_].detach(), alpha=1 - d)
                        else:
                            v_.copy_(msd[k_])
            progress_in_iter = epoch * max_iter + it
            cur_lr = lr_at(progress_in_iter + 1)
            for g in optimizer.param_groups:
                g["lr"] = cur_lr
            # ---- after_iter
            if (it + 1) % args.print_interval == 0:
                meters = {k: float(torch.as_tensor(v).detach()) for k, v in outputs.items()}
                loss_meter = {k: v for k, v in meters.items() if "loss" in k}
                print(
                    f"epoch: {epoch + 1}/{args.max_epoch}, iter: {it + 1}/{max_iter}, "
                    f"iter_time: {time.time() - iter_start:.3f}s, data_time: {data_time:.3f}s, "
                    + ", ".join(f"{k}: {v:.1f}" for k, v in loss_meter.items())
                    + f", lr: {cur_lr:.3e}, size: {S:d}",
                    flush=True,
                )
                logs = {"train/" + k: v for k, v in loss_meter.items()}
                logs.update({"train/lr": cur_lr})
                mlflow.log_metrics(logs, step=epoch + 1)  # MlflowLogger.on_log
        # ---- after_epoch
        if (epoch + 1) % eval_interval == 0:
            ap50_95, ap50 = evaluate(ema if args.ema else model)
            best_ap = max(best_ap, ap50_95)
            print(
                f"Average Precision (AP) @[ IoU=0.50:0.95 ] = {ap50_95:.3f}\n"
                f"Average Precision (AP) @[ IoU=0.50 ] = {ap50:.3f}",
                flush=True,
            )
            mlflow.log_metrics(
                {
                    "val/COCOAP50": ap50,
                    "val/COCOAP50_95": ap50_95,
                    "val/best_ap": round(best_ap, 3),
                    "train/epoch": epoch + 1,
                },
                step=epoch + 1,
            )
    print(f"Training of experiment is done and the best AP is {best_ap * 100:.2f}", flush=True)
    print(f"total time {time.time() - t_start:.1f} s", flush=True)
