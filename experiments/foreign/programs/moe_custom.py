"""A small mixture-of-experts classifier from a custom trainer (no framework).

Plain PyTorch + the plain ``mlflow`` API with this trainer's own names: ``train/ce_loss``,
``train/total_loss``, ``router/aux_loss`` (Switch-style load-balancing loss),
``router/z_loss``, ``moe/expert_load_entropy`` (entropy of the token share per expert, in
nats), ``moe/max_over_mean_load``, ``moe/num_idle_experts``, ``perf/samples_per_s``,
``val/ce_loss`` and ``val/acc``.  Params as the trainer's config keys (``moe.num_experts``,
``moe.top_k``, ``moe.aux_loss_coef``, ``optim.lr``, ``optim.clip``).  Written without
looking at the doctor.

Top-1 routing: a token goes to its highest-scoring expert, scaled by that expert's gate
probability; the load-balancing loss is ``E * sum(f_e * p_e)``.
"""

import time

import _setup
import mlflow
import torch
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--moe.num_experts": ("E", 8),
        "--moe.top_k": ("k", 1),
        "--moe.aux_loss_coef": ("aux", 0.1),
        "--moe.router_init_std": ("rstd", 0.02),
        "--moe.expert_dim": ("hid", 32),
        "--optim.lr": ("lr", 3e-3),
        "--optim.clip": ("clip", 1.0),
        "--optim.warmup": ("warmup", 10),
        "--train.steps": ("steps", 300),
        "--train.batch_size": ("bs", 64),
        "--train.eval_every": ("eval_every", 25),
        "--train.log_every": ("log_every", 3),
        "--train.seed": ("seed", 0),
    }
)

rng = _setup.seeded(args.seed)
X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
y = torch.tensor(y)
perm = torch.from_numpy(rng.permutation(len(X)))
va, tr = perm[:200], perm[200:]


class MoE(torch.nn.Module):
    def __init__(self, d, h, E):
        super().__init__()
        self.router = torch.nn.Linear(d, E, bias=False)
        torch.nn.init.normal_(self.router.weight, std=args.rstd)
        self.w1 = torch.nn.Parameter(torch.randn(E, d, h) * d**-0.5)
        self.w2 = torch.nn.Parameter(torch.randn(E, h, d) * h**-0.5)

    def forward(self, x):
        probs = self.router(x).float().softmax(-1)  # (N, E)
        gate, idx = probs.max(-1)  # top-1
        h = torch.einsum("nd,ndh->nh", x, self.w1[idx]).relu()
        out = torch.einsum("nh,nhd->nd", h, self.w2[idx]) * gate[:, None]
        E = probs.shape[1]
        frac = torch.bincount(idx, minlength=E).float() / len(x)
        aux = E * (frac * probs.mean(0)).sum()
        z = torch.logsumexp(self.router(x), -1).pow(2).mean()
        return x + out, aux, z, frac


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(64, 32)
        self.moe = MoE(32, args.hid, args.E)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        h, aux, z, frac = self.moe(torch.tanh(self.inp(x)))
        return self.head(h), aux, z, frac


net = Net()
opt = torch.optim.AdamW(net.parameters(), lr=args.lr)

with mlflow.start_run():
    mlflow.log_params(
        {
            "moe.num_experts": args.E,
            "moe.top_k": args.k,
            "moe.aux_loss_coef": args.aux,
            "moe.router_init_std": args.rstd,
            "moe.expert_dim": args.hid,
            "optim.lr": args.lr,
            "optim.clip": args.clip,
            "optim.warmup": args.warmup,
            "train.steps": args.steps,
            "train.batch_size": args.bs,
            "train.seed": args.seed,
        }
    )
    t_prev = time.perf_counter()
    for step in range(1, args.steps + 1):
        bi = tr[torch.from_numpy(rng.integers(0, len(tr), args.bs))]
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / max(1, args.warmup))
        logits, aux, z, frac = net(X[bi])
        ce = torch.nn.functional.cross_entropy(logits, y[bi])
        total = ce + args.aux * aux + 1e-3 * z
        opt.zero_grad()
        total.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        opt.step()
        now = time.perf_counter()
        dt, t_prev = now - t_prev, now
        share = frac.clamp_min(1e-12)
        m = {
            "train/ce_loss": ce.item(),
            "train/total_loss": total.item(),
            "router/aux_loss": aux.item(),
            "router/z_loss": z.item(),
            "moe/expert_load_entropy": float(-(share * share.log()).sum()),
            "moe/max_over_mean_load": float(frac.max() * args.E),
            "moe/num_idle_experts": int((frac == 0).sum()),
            "perf/samples_per_s": args.bs / dt,
        }
        if step % args.log_every and step % args.eval_every:
            continue
        if step % args.eval_every == 0:
            with torch.no_grad():
                vl, _, _, _ = net(X[va])
                m["val/ce_loss"] = torch.nn.functional.cross_entropy(vl, y[va]).item()
                m["val/acc"] = float((vl.argmax(1) == y[va]).float().mean())
        mlflow.log_metrics(m, step=step)
    print(f"done: {args.steps} steps, ce {ce.item():.3f}")
