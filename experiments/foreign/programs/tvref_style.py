"""An image classifier trained the way torchvision's ``references/classification/train.py``
trains one, the ``MetricLogger``'s console meters mirrored into MLflow by the team's patch to
``log_every``.

Plain PyTorch + numpy + the plain ``mlflow`` API (no torchvision here).  The argparse namespace
is logged as params.  As ``train_one_epoch`` fills them, the meters are ``lr`` (window 1),
``img/s`` (window 10, the batch size over the step's wall time, printed as its latest value),
``loss``, ``acc1`` and ``acc5`` (window 20, printed as ``median (global_avg)``; accuracies in
percent).  Every ``--print_freq`` iterations (and at the epoch's last), ``log_every`` prints the
line ``Epoch: [3]  [ 20/45]  eta: 0:00:02  lr: 0.1  img/s: 812.3  loss: 0.3124 (0.4410)  acc1:
90.6250 (86.9) ...  time: ...  data: ...`` and the patch logs each meter's printed value (the
window *median* for loss/acc1/acc5, the latest value for lr and img/s) plus ``time`` and
``data`` (seconds, window medians) at step ``epoch * len(data_loader) + i``.  After each epoch
``evaluate`` prints ``Test:  Acc@1 ... Acc@5 ...`` and the patch logs ``test_loss``,
``test_acc1`` and ``test_acc5`` (global averages over the test set) at step = epoch (from 0).
Written without looking at the doctor.

Data: scikit-learn's bundled digits (8x8, 10 classes), shipped as a zip of 16x16 8-bit PNGs
(written here, stored filter 0 + zlib) and a held-out test split of ``--val_fraction``.  With
``--cache_dataset 1`` (the reference's ``--cache-dataset``) the decoded images are saved once
with ``torch.save`` and loaded from that file; the train transform is a random crop of
``--train_crop_size`` with ``--crop_padding`` px padding and random erasing ``--random_erase``, test: a centre
crop; then normalization by the dataset's mean and std, or per image
(``--per_image_standardize 1``, the team's transform).  Model: a small ResNet (BasicBlocks, ``--width`` base channels),
``CrossEntropyLoss(label_smoothing=...)``, SGD with momentum (or AdamW/RMSprop), no weight
decay on norms when ``--norm_weight_decay 0``; ``--lr_scheduler steplr|cosineannealinglr|
exponentiallr`` after ``--lr_warmup_epochs`` of linear warm-up, stepped per epoch; optional
``--clip_grad_norm``.

Faults are real settings or data: ``--lr`` typed two decimal places off (5.0 for 0.05);
``--train_fraction`` of a few percent for many epochs without weight decay, augmentation or
schedule; ``--blank_scans N`` - N training images the scanner wrote blank (all zeros), read
through the team's ``--per_image_standardize`` transform, whose std has no floor (0/0);
``--cache_lost_epoch K`` - before epoch K the scratch cleaner removes the cached dataset file;
the loader's workers, re-created every epoch (no ``persistent_workers``), re-open the dataset
and fall back to opening the zip archive and decoding the PNG for every sample.
"""

import os
import struct
import tempfile
import time
import zipfile
import zlib
from collections import defaultdict, deque

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--model": "resnet_tiny",
        "--seed": 0,
        "--batch_size": 32,
        "--epochs": 10,
        "--opt": "sgd",
        "--lr": 0.05,
        "--momentum": 0.9,
        "--weight_decay": ("wd", 1e-4),
        "--norm_weight_decay": 0.0,
        "--label_smoothing": 0.0,
        "--lr_scheduler": "cosineannealinglr",
        "--lr_warmup_epochs": 1,
        "--lr_warmup_decay": 0.01,
        "--lr_step_size": 5,
        "--lr_gamma": 0.1,
        "--lr_min": 0.0,
        "--print_freq": 5,
        "--clip_grad_norm": 0.0,
        "--train_crop_size": 16,
        "--crop_padding": 2,
        "--random_erase": 0.0,
        "--width": 16,
        "--val_fraction": 0.2,
        "--train_fraction": 1.0,
        "--per_image_standardize": 0,
        "--blank_scans": 0,
        "--cache_dataset": 1,
        "--cache_lost_epoch": -1,
    }
)
rng = _setup.seeded(args.seed)
print(args, flush=True)

# ---------------------------------------------------------------- data: a zip of PNGs


def png_encode(img):
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(img.shape[0]))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", img.shape[1], img.shape[0], 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def png_decode(blob):
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        tag, data = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + n]
        if tag == b"IHDR":
            w, h = struct.unpack(">II", data[:8])
        elif tag == b"IDAT":
            idat += data
        pos += 12 + n
    raw = zlib.decompress(idat)
    rows = [np.frombuffer(raw[r * (w + 1) + 1 : (r + 1) * (w + 1)], np.uint8) for r in range(h)]
    return np.stack(rows)


digits = load_digits()
imgs16 = np.kron(digits.images, np.ones((2, 2)))  # 8x8 -> 16x16, values 0-16
imgs16 = (imgs16 * 255 / 16).round().astype(np.uint8)
labels = digits.target.astype(np.int64)
split_rng = np.random.default_rng(1234)
perm = split_rng.permutation(len(labels))
for i in perm[-args.blank_scans :] if args.blank_scans else []:
    imgs16[i] = 0  # scans the scanner wrote blank
n_val = int(round(args.val_fraction * len(labels)))
val_idx, train_idx = perm[:n_val], perm[n_val:]
if args.train_fraction < 1.0:
    train_idx = train_idx[: max(10, int(round(args.train_fraction * len(train_idx))))]

root = tempfile.mkdtemp(prefix="imagefolder_")
archive = os.path.join(root, "digits.zip")
with zipfile.ZipFile(archive, "w") as zf:
    for i in range(len(labels)):
        zf.writestr(f"{labels[i]}/{i:05d}.png", png_encode(imgs16[i]))
cache_file = os.path.join(root, "cache", "imagefolder.pt")


class ImageFolder:
    def __init__(self, indices):
        self.indices = indices
        self.images = None

    def reload(self):
        if os.path.exists(cache_file):
            self.images = torch.load(cache_file)
        elif self.images is not None or not args.cache_dataset:
            self.images = None
            print(f"cache {cache_file} not found, reading {archive}", flush=True)

    def __getitem__(self, k):
        i = int(self.indices[k])
        if self.images is not None:
            return self.images[i], int(labels[i])
        with zipfile.ZipFile(archive) as zf:  # no cache: decode from the archive
            img = png_decode(zf.read(f"{labels[i]}/{i:05d}.png"))
        return torch.from_numpy(img.astype(np.float32) / 255.0), int(labels[i])

    def __len__(self):
        return len(self.indices)


print("Loading data", flush=True)
t0 = time.time()
if args.cache_dataset:
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        decoded = np.stack(
            [png_decode(zf.read(f"{labels[i]}/{i:05d}.png")) for i in range(len(labels))]
        )
    torch.save(torch.from_numpy(decoded.astype(np.float32) / 255.0), cache_file)
    print(f"Saving dataset_train to {cache_file}", flush=True)
dataset, dataset_test = ImageFolder(train_idx), ImageFolder(val_idx)
print(f"Took {time.time() - t0:.2f}", flush=True)

MEAN, STD = 0.25, 0.35


def standardize(x):
    if args.per_image_standardize:  # the team's PerImageStandardize (no floor on the std)
        return (x - x.mean()) / x.std()
    return (x - MEAN) / STD


def train_transform(x):
    p = args.crop_padding
    x = F.pad(x[None], (p, p, p, p))
    c = args.train_crop_size
    a, b = rng.integers(0, 16 + 2 * p - c + 1, 2)
    x = standardize(x[:, a : a + c, b : b + c])
    if args.random_erase > 0 and rng.random() < args.random_erase:
        h, w = rng.integers(3, c // 2, 2)
        a, b = rng.integers(0, c - h), rng.integers(0, c - w)
        x[:, a : a + h, b : b + w] = torch.randn(1, h, w)
    return x


def test_transform(x):
    o = (16 - args.train_crop_size) // 2
    return standardize(x[None, o : o + args.train_crop_size, o : o + args.train_crop_size])


def data_loader(ds, transform, shuffle):
    order = rng.permutation(len(ds)) if shuffle else np.arange(len(ds))
    for b in range(0, len(order), args.batch_size):
        items = [ds[int(k)] for k in order[b : b + args.batch_size]]
        yield (
            torch.stack([transform(x) for x, _ in items]),
            torch.tensor([y for _, y in items]),
        )


def n_batches(ds):
    return (len(ds) + args.batch_size - 1) // args.batch_size


# ---------------------------------------------------------------- model


class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + idt)


class ResNetTiny(torch.nn.Module):
    def __init__(self, w, num_classes=10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, w, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(w)
        self.layer1 = BasicBlock(w, w, 1)
        self.layer2 = BasicBlock(w, 2 * w, 2)
        self.layer3 = BasicBlock(2 * w, 4 * w, 2)
        self.fc = torch.nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


# ---------------------------------------------------------------- utils (references/.../utils.py)


class SmoothedValue:
    def __init__(self, window_size=20, fmt=None):
        self.deque = deque(maxlen=window_size)
        self.total, self.count = 0.0, 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value, n=1):
        self.deque.append(value)
        self.count += n
        self.total += value * n

    @property
    def median(self):
        return float(torch.tensor([float(v) for v in self.deque]).median())

    @property
    def global_avg(self):
        return float(self.total) / self.count

    @property
    def value(self):
        return float(self.deque[-1])

    def __str__(self):
        return self.fmt.format(median=self.median, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    def __init__(self, delimiter="  "):
        self.meters, self.delimiter = defaultdict(SmoothedValue), delimiter

    def add_meter(self, name, meter):
        self.meters[name] = meter

    def update(self, **kwargs):
        for k, v in kwargs.items():
            self.meters[k].update(v)

    def __getattr__(self, name):
        if name in self.__dict__.get("meters", {}):
            return self.meters[name]
        raise AttributeError(name)

    def log_every(self, iterable, length, print_freq, header, step0=None):
        i, start = 0, time.time()
        end = time.time()
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        for obj in iterable:
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == length - 1:
                eta = int(iter_time.global_avg * (length - i))
                meters = self.delimiter.join(f"{k}: {m}" for k, m in self.meters.items())
                print(
                    f"{header}  [{i:>{len(str(length))}}/{length}]  eta: 0:{eta // 60:02d}:"
                    f"{eta % 60:02d}  {meters}  time: {iter_time.median:.4f}  "
                    f"data: {data_time.median:.4f}",
                    flush=True,
                )
                if step0 is not None:  # the team's MLflow mirror of the printed meters
                    vals = {
                        k: (m.value if m.deque.maxlen == 1 or k == "img/s" else m.median)
                        for k, m in self.meters.items()
                    }
                    vals |= {"time": iter_time.median, "data": data_time.median}
                    mlflow.log_metrics(vals, step=step0 + i)
            i += 1
            end = time.time()
        total = int(time.time() - start)
        print(f"{header} Total time: 0:{total // 60:02d}:{total % 60:02d}", flush=True)


def accuracy(output, target, topk=(1,)):
    with torch.inference_mode():
        _, pred = output.topk(max(topk), 1, True, True)
        correct = pred.t().eq(target[None])
        return [
            correct[:k].flatten().sum(dtype=torch.float32) * (100.0 / len(target)) for k in topk
        ]


# ---------------------------------------------------------------- train.py


def train_one_epoch(model, criterion, optimizer, epoch):
    model.train()
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
    metric_logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value:.1f}"))
    length = n_batches(dataset)
    loader = data_loader(dataset, train_transform, shuffle=True)
    for image, target in metric_logger.log_every(
        loader, length, args.print_freq, f"Epoch: [{epoch}]", step0=epoch * length
    ):
        start_time = time.time()
        output = model(image)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        if args.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        optimizer.step()
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        batch_size = image.shape[0]
        metric_logger.update(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        metric_logger.meters["acc1"].update(acc1.item(), n=batch_size)
        metric_logger.meters["acc5"].update(acc5.item(), n=batch_size)
        metric_logger.meters["img/s"].update(batch_size / (time.time() - start_time))


def evaluate(model, criterion, epoch):
    model.eval()
    metric_logger = MetricLogger(delimiter="  ")
    with torch.inference_mode():
        loader = data_loader(dataset_test, test_transform, shuffle=False)
        for image, target in metric_logger.log_every(loader, n_batches(dataset_test), 100, "Test:"):
            output = model(image)
            loss = criterion(output, target)
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            batch_size = image.shape[0]
            metric_logger.update(loss=loss.item())
            metric_logger.meters["acc1"].update(acc1.item(), n=batch_size)
            metric_logger.meters["acc5"].update(acc5.item(), n=batch_size)
    m = metric_logger.meters
    print(f"Test:  Acc@1 {m['acc1'].global_avg:.3f} Acc@5 {m['acc5'].global_avg:.3f}", flush=True)
    mlflow.log_metrics(
        {
            "test_loss": m["loss"].global_avg,
            "test_acc1": m["acc1"].global_avg,
            "test_acc5": m["acc5"].global_avg,
        },
        step=epoch,
    )
    return m["acc1"].global_avg


with mlflow.start_run():
    mlflow.log_params(vars(args) | {"n_train": len(dataset), "n_test": len(dataset_test)})
    print("Creating model", flush=True)
    model = ResNetTiny(args.width)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    norm_params = [p for n, p in model.named_parameters() if "bn" in n or "down.1" in n]
    other = [p for n, p in model.named_parameters() if not ("bn" in n or "down.1" in n)]
    groups = [
        {"params": other, "weight_decay": args.wd},
        {"params": norm_params, "weight_decay": args.norm_weight_decay},
    ]
    if args.opt == "sgd":
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=False)
    elif args.opt == "rmsprop":
        optimizer = torch.optim.RMSprop(groups, lr=args.lr, momentum=args.momentum, eps=0.0316)
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.lr)
    main_epochs = args.epochs - args.lr_warmup_epochs
    if args.lr_scheduler == "steplr":
        main = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_step_size, args.lr_gamma)
    elif args.lr_scheduler == "cosineannealinglr":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, main_epochs, args.lr_min)
    elif args.lr_scheduler == "exponentiallr":
        main = torch.optim.lr_scheduler.ExponentialLR(optimizer, args.lr_gamma)
    else:
        main = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    if args.lr_warmup_epochs > 0:
        warm = torch.optim.lr_scheduler.LinearLR(
            optimizer, args.lr_warmup_decay, total_iters=args.lr_warmup_epochs
        )
        lr_scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer, [warm, main], milestones=[args.lr_warmup_epochs]
        )
    else:
        lr_scheduler = main
    print("Start training", flush=True)
    start_time = time.time()
    for epoch in range(args.epochs):
        if epoch == args.cache_lost_epoch and os.path.exists(cache_file):
            os.remove(cache_file)  # the scratch cleaner's sweep
        for ds in (dataset, dataset_test):  # workers re-created each epoch re-open the cache
            ds.reload()
        train_one_epoch(model, criterion, optimizer, epoch)
        lr_scheduler.step()
        evaluate(model, criterion, epoch)
    total = int(time.time() - start_time)
    print(f"Training time 0:{total // 60:02d}:{total % 60:02d}", flush=True)
