"""A physics-informed network solving DeepXDE's inverse diffusion problem, the ``model.train``
display rows mirrored to MLflow by the team's callback.

Plain PyTorch + numpy + the plain ``mlflow`` API (no DeepXDE here).  What is imitated (the
``examples/pinn_inverse/diffusion_1d_inverse.py`` set-up on the PyTorch backend):

* ``geom = dde.geometry.Interval(-1, 1)``, ``timedomain = dde.geometry.TimeDomain(0, 1)``,
  ``dde.data.TimePDE(geomtime, pde, [bc, ic, observe_y], num_domain, num_boundary,
  num_initial, anchors=observe_x, solution=func, num_test)`` for
  ``u_t = C u_xx - exp(-t) (sin(pi x) - pi^2 sin(pi x))`` with ``C = dde.Variable(2.0)`` to be
  found (the true C is 1, ``u = exp(-t) sin(pi x)``), a Dirichlet BC, an IC and a
  ``PointSetBC`` of the sensors' readings;
* ``dde.nn.FNN([2] + [width] * depth + [1], "tanh", "Glorot uniform")``, ``model.compile("adam",
  lr, metrics=["l2 relative error"], external_trainable_variables=C)``, the loss a sum of the
  components' mean squares (``loss_weights`` 1);
* ``model.train(iterations, display_every)``: the ``Step  Train loss  Test loss  Test metric``
  table (one row at step 0 and every ``display_every`` steps, the component lists as
  DeepXDE prints them), ``Best model at step ...`` and ``'train' took ... s`` at the end;
  ``dde.callbacks.VariableValue(C, period=display_every)`` printing ``C``;
  ``dde.callbacks.PDEPointResampler(period)`` re-drawing the residual points;
* the team's MLflow callback at every display row: ``loss_train``, ``loss_test`` (sums of the
  components), ``metrics_test`` (the l2 relative error of u on the test points), the train
  components ``loss_train_pde``, ``loss_train_bc``, ``loss_train_ic``, ``loss_train_obs``, and
  ``C``, at ``step = train_state.step`` (0, display_every, ...).

Data: the exact solution at ``n_sensors`` fixed sensors on three time slices, plus sensor noise.
Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--width``, ``--depth``, ``--num_domain``, ``--iterations``;
* ``--resample_period k`` with ``--resample_mode uniform | rar``: the team's background
  resampler thread prepares the next residual points while training runs (``rar``:
  residual-based adaptive refinement, the candidates' residuals evaluated with the model);
* ``--checkpoint_every k`` with ``--save_dir``: the team's ``ModelCheckpoint``-like
  ``torch.save`` of the network and C every k steps;
* ``--extra_sensors_step k``: the second logger's readings (``n_extra`` sensors at t = 0.5)
  join the observations at step k; ``--extra_sensors_units percent`` is that logger's
  export written in percent of full scale instead of the solution's units.
"""

import math
import os
import queue
import threading
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--width": 32,
        "--depth": 3,
        "--lr": 1e-3,
        "--iterations": 3000,
        "--display_every": 100,
        "--num_domain": 200,
        "--num_boundary": 40,
        "--num_initial": 20,
        "--num_test": 400,
        "--n_sensors": 10,
        "--sensor_noise": 0.01,
        "--resample_period": 0,
        "--resample_mode": "uniform",  # uniform | rar
        "--checkpoint_every": 0,
        "--save_dir": "model",
        "--extra_sensors_step": 0,
        "--n_extra": 20,
        "--extra_sensors_units": "same",  # same | percent
    }
)
rng = _setup.seeded(args.seed)
PI = math.pi


def exact(xt):
    return np.sin(PI * xt[:, :1]) * np.exp(-xt[:, 1:])


def domain_points(n, r):
    return np.column_stack([r.uniform(-1, 1, n), r.uniform(0, 1, n)])


def T(a):
    return torch.tensor(a, dtype=torch.float32)


# ----------------------------------------------------------------------------- data
xb = np.column_stack(
    [rng.choice([-1.0, 1.0], args.num_boundary), rng.uniform(0, 1, args.num_boundary)]
)
xi = np.column_stack([rng.uniform(-1, 1, args.num_initial), np.zeros(args.num_initial)])
srng = np.random.default_rng(99)
sx = np.linspace(-1, 1, args.n_sensors)
obs_x = np.vstack([np.column_stack([sx, np.full_like(sx, t)]) for t in (0.33, 0.67, 1.0)])
obs_y = exact(obs_x) + srng.normal(0, args.sensor_noise, (len(obs_x), 1))
ex_x = np.column_stack([np.linspace(-0.95, 0.95, args.n_extra), np.full(args.n_extra, 0.5)])
ex_y = exact(ex_x) + srng.normal(0, args.sensor_noise, (args.n_extra, 1))
if args.extra_sensors_units == "percent":
    ex_y = ex_y * 100.0
test_x = domain_points(args.num_test, np.random.default_rng(5))
state = {
    "X": T(np.vstack([domain_points(args.num_domain, rng), obs_x])),
    "ox": T(obs_x),
    "oy": T(obs_y),
}
XB, XI, XT = T(xb), T(xi), T(test_x)

# ----------------------------------------------------------------------------- model
layers = [2] + [args.width] * args.depth + [1]
net = torch.nn.Sequential()
for a, b in zip(layers[:-1], layers[1:], strict=True):
    lin = torch.nn.Linear(a, b)
    torch.nn.init.xavier_uniform_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    net.append(lin)
    if b != 1:
        net.append(torch.nn.Tanh())
C = torch.nn.Parameter(torch.tensor(2.0))
opt = torch.optim.Adam(list(net.parameters()) + [C], lr=args.lr)


def residual(x):
    x = x.clone().requires_grad_(True)
    u = net(x)
    du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
    u_x, u_t = du[:, :1], du[:, 1:]
    u_xx = torch.autograd.grad(u_x.sum(), x, create_graph=True)[0][:, :1]
    f = torch.exp(-x[:, 1:]) * (torch.sin(PI * x[:, :1]) - PI**2 * torch.sin(PI * x[:, :1]))
    return u_t - C * u_xx + f


def losses(X):
    r = residual(X)
    lb = net(XB) - T(exact(xb))
    li = net(XI) - T(exact(xi))
    lo = net(state["ox"]) - state["oy"]
    return [torch.mean(r**2), torch.mean(lb**2), torch.mean(li**2), torch.mean(lo**2)]


# ----------------------------------------------------------------------------- resampler
model_lock = threading.Lock()
request, points = threading.Event(), queue.Queue(maxsize=1)


def resampler():
    r = np.random.default_rng(args.seed + 1000)
    while True:
        request.wait()
        request.clear()
        if args.resample_mode == "rar":
            cand = T(domain_points(4 * args.num_domain, r))
            with model_lock:  # the model must not change while the residuals are read
                res = residual(cand).detach().abs()[:, 0]
            keep = cand[torch.argsort(res, descending=True)[: args.num_domain]]
        else:
            keep = T(domain_points(args.num_domain, r))
        points.put(keep)


if args.resample_period:
    threading.Thread(target=resampler, daemon=True).start()


def fmt(v):
    return "[" + ", ".join(f"{x:.2e}" for x in v) + "]"


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print("Compiling model...\n'compile' took 0.000412 s\n", flush=True)
    print("Training model...\n", flush=True)
    print(f"{'Step':<10}{'Train loss':<34}{'Test loss':<34}Test metric", flush=True)
    t0 = time.time()
    best = (math.inf, 0, None, None)
    for step in range(args.iterations + 1):
        with model_lock:
            if args.resample_period and step and step % args.resample_period == 0:
                request.set()
                new = points.get()  # the next residual points from the resampler thread
                state["X"] = torch.cat([new, state["ox"]])
            if args.extra_sensors_step and step == args.extra_sensors_step:
                state["ox"] = torch.cat([T(obs_x), T(ex_x)])
                state["oy"] = torch.cat([T(obs_y), T(ex_y)])
                print(
                    f"step {step}: the second logger's {args.n_extra} readings joined", flush=True
                )
            ls = losses(state["X"])
            if step % args.display_every == 0:
                tr = [v.item() for v in ls]
                te = [v.item() for v in losses(XT)]
                with torch.no_grad():
                    u, ue = net(XT), T(exact(test_x))
                    err = (torch.linalg.norm(u - ue) / torch.linalg.norm(ue)).item()
                print(f"{step:<10}{fmt(tr)}    {fmt(te)}    [{err:.2e}]", flush=True)
                print(f"{step} [{C.item():.2e}]", flush=True)
                mlflow.log_metrics(
                    {
                        "loss_train": sum(tr),
                        "loss_test": sum(te),
                        "metrics_test": err,
                        "loss_train_pde": tr[0],
                        "loss_train_bc": tr[1],
                        "loss_train_ic": tr[2],
                        "loss_train_obs": tr[3],
                        "C": C.item(),
                    },
                    step=step,
                )
                if sum(tr) < best[0]:
                    best = (sum(tr), step, sum(te), err)
            if step == args.iterations:
                break
            opt.zero_grad()
            sum(ls).backward()
            opt.step()
        if args.checkpoint_every and step and step % args.checkpoint_every == 0:
            path = os.path.join(args.save_dir, f"model-{step}.pt")
            torch.save({"model_state_dict": net.state_dict(), "C": C.detach()}, path)
            print(f"Epoch {step}: saving model to {path} ...", flush=True)
    print(f"\nBest model at step {best[1]}:", flush=True)
    print(
        f"  train loss: {best[0]:.2e}\n  test loss: {best[2]:.2e}\n  test metric: [{best[3]:.2e}]\n",
        flush=True,
    )
    print(f"'train' took {time.time() - t0:.6f} s\n", flush=True)
