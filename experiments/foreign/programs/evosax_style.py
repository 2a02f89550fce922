"""A small MLP regressor trained by an evolution strategy as evosax's ``OpenES`` trains one, its
``ESLog`` mirrored to MLflow by the team's logger.

Plain numpy + the plain ``mlflow`` API (no JAX, no evosax here).  What is imitated:

* ``OpenES(popsize, num_dims, opt_name="adam", lrate_init, sigma_init, sigma_decay,
  sigma_limit, centered_rank=True, maximize=False)``: antithetic Gaussian perturbations of the
  mean, ``FitnessShaper(centered_rank=True)``, the gradient estimate handed to Adam with
  ``lrate_init`` (and ``lrate_decay``), ``sigma`` decayed each generation down to
  ``sigma_limit``; ``ParameterReshaper`` flattens the MLP's weights;
* the ``ask`` / ``evaluate`` / ``tell`` loop and ``ESLog(num_dims, num_generations, top_k)``:
  ``log_top_1`` (the best fitness seen), ``log_top_mean`` / ``log_top_std`` (of the top-k
  archive), ``log_gen_1`` (the generation's best), ``log_gen_mean``, ``log_gen_std``; the
  team's writer sends them every ``log_every`` generations at ``step = gen_counter`` (from 0),
  with ``state/sigma``, ``state/lrate`` and ``gen_time_s`` (the generation's seconds);
  ``test/mse`` of the mean parameters every ``eval_every`` generations;
* the printed ``# Gen 40 | Best: 0.3120 | Gen mean: 0.4418 | sigma: 0.0289`` lines.

Task: regress a generated sensor calibration target (10 inputs, a smooth nonlinear function
plus noise) with a 10-``hidden``-``hidden``-1 tanh MLP; the fitness of a member is its MSE on a
minibatch of ``batch_size`` rows drawn from the training shards.  The team's second shard
(``--extra_shard_gen``) is merged into the training rows when that generation starts; its CSV
export (``--extra_shard_export``) is ``aligned`` or ``shifted`` (one header line too many: every
target belongs to another row).  ``--novelty_weight`` turns on the team's NS-ES variant: each member's
behaviour (its predictions on ``probe_rows`` probe rows) joins an archive every generation and
its novelty (the mean distance to its ``novelty_k`` nearest archived behaviours, computed by
broadcasting against the whole archive) is subtracted from its fitness, weighted.
``--ckpt_every`` saves the mean under the state lock; with ``--ckpt_async_flush`` the saver
also flushes the archive index under the same (non-reentrant) lock.  Written without looking
at the doctor.

Faults are real settings, data and code paths: ``--lrate_init``; ``--extra_shard_export``;
``--novelty_weight``; ``--ckpt_async_flush``.
"""

import threading
import time

import _setup
import mlflow
import numpy as np

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--popsize": 64,
        "--hidden": 16,
        "--num_generations": 400,
        "--lrate_init": 0.03,
        "--lrate_decay": 0.999,
        "--sigma_init": 0.05,
        "--sigma_decay": 0.999,
        "--sigma_limit": 0.01,
        "--batch_size": 256,
        "--n_train": 12000,
        "--n_test": 2000,
        "--log_every": 5,
        "--eval_every": 20,
        "--top_k": 5,
        "--extra_shard_gen": 0,  # 0: no second shard
        "--extra_shard_rows": 8000,
        "--extra_shard_export": "aligned",  # aligned | shifted
        "--novelty_weight": 0.0,  # > 0: NS-ES novelty bonus against the behaviour archive
        "--novelty_k": 10,
        "--probe_rows": 256,
        "--ckpt_every": 0,
        "--ckpt_async_flush": 0,
    }
)
rng = _setup.seeded(args.seed, torch=False)

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(77)  # the same sensor for every run
W_true = drng.normal(0, 0.4, (10, 4))


def target(x):
    z = x @ W_true
    return (np.sin(z[:, 0]) + 0.5 * z[:, 1] * np.tanh(z[:, 2]) - 0.3 * z[:, 3] ** 2).astype(
        np.float64
    )


def draw(n, g):
    x = g.normal(0, 1, (n, 10))
    return x, target(x) + g.normal(0, 0.1, n)


X_tr, y_tr = draw(args.n_train, drng)
X_te, y_te = draw(args.n_test, drng)
X_ex, y_ex = draw(args.extra_shard_rows, drng)
X_probe = X_te[: args.probe_rows]
if args.extra_shard_export == "shifted":  # one header line too many in the export
    y_ex = np.roll(y_ex, 1)

# ----------------------------------------------------------------------------- model
shapes = [(10, args.hidden), (args.hidden,), (args.hidden, args.hidden), (args.hidden,)]
shapes += [(args.hidden, 1), (1,)]
sizes = [int(np.prod(s)) for s in shapes]
num_dims = sum(sizes)


def reshape(flat):  # ParameterReshaper, for a population (P, D)
    out, o = [], 0
    for s, n in zip(shapes, sizes, strict=True):
        out.append(flat[:, o : o + n].reshape((flat.shape[0],) + s))
        o += n
    return out


def forward(pop, x):  # (P, D), (N, 10) -> (P, N)
    w1, b1, w2, b2, w3, b3 = reshape(pop)
    h = np.tanh(np.einsum("nd,pdh->pnh", x, w1) + b1[:, None, :])
    h = np.tanh(np.einsum("pnd,pdh->pnh", h, w2) + b2[:, None, :])
    return (np.einsum("pnd,pdh->pnh", h, w3) + b3[:, None, :])[..., 0]


def init_mean():
    parts = []
    for s in shapes:
        fan_in = s[0] if len(s) == 2 else 1
        parts.append(
            (drng.normal(0, 1 / np.sqrt(fan_in), s) if len(s) == 2 else np.zeros(s)).ravel()
        )
    return np.concatenate(parts)


def centered_rank(f):
    r = np.empty(len(f))
    r[np.argsort(f)] = np.arange(len(f))
    return r / (len(f) - 1) - 0.5


mean = init_mean()
m_adam, v_adam = np.zeros(num_dims), np.zeros(num_dims)
sigma, lrate = args.sigma_init, args.lrate_init
state_lock = threading.Lock()
archive, archive_index = [], []
top = np.full(args.top_k, np.inf)


def flush_archive_index():
    with state_lock:  # the index is shared with the plotting thread
        np.save("archive_index.npy", np.array(archive_index, dtype=np.int64))


def save_checkpoint(gen):
    np.savez("es_state.npz", mean=mean, sigma=sigma, gen=gen)
    if args.ckpt_async_flush:
        flush_archive_index()


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"ParameterReshaper: {num_dims} parameters, popsize {args.popsize}", flush=True)
    Xs, ys = X_tr, y_tr
    half = args.popsize // 2
    for gen in range(args.num_generations):
        t0 = time.time()
        if args.extra_shard_gen and gen == args.extra_shard_gen:
            Xs, ys = np.concatenate([X_tr, X_ex]), np.concatenate([y_tr, y_ex])
            print(f"merged the second shard: {len(Xs)} training rows", flush=True)
        # ask (antithetic)
        z = rng.normal(0, 1, (half, num_dims))
        z = np.concatenate([z, -z])
        pop = mean[None] + sigma * z
        # evaluate
        i = rng.integers(0, len(Xs), args.batch_size)
        pred = forward(pop, Xs[i])
        fitness = np.mean((pred - ys[i][None]) ** 2, 1)
        if args.novelty_weight > 0:  # NS-ES: behaviour = predictions on the probe rows
            beh = forward(pop, X_probe)
            if archive:
                arch = np.concatenate(archive)
                dist = np.sqrt(((beh[:, None, :] - arch[None, :, :]) ** 2).sum(-1))
                k = min(args.novelty_k, dist.shape[1])
                novelty = np.sort(dist, 1)[:, :k].mean(1)
                shaped_fit = fitness - args.novelty_weight * novelty
            else:
                shaped_fit = fitness
            archive.append(beh)
            archive_index.append(gen)
        else:
            shaped_fit = fitness
        # tell
        shaped = centered_rank(shaped_fit)
        grad = (shaped @ z) / (args.popsize * sigma)  # minimise
        m_adam = 0.9 * m_adam + 0.1 * grad
        v_adam = 0.999 * v_adam + 0.001 * grad**2
        mhat = m_adam / (1 - 0.9 ** (gen + 1))
        vhat = v_adam / (1 - 0.999 ** (gen + 1))
        mean = mean - lrate * mhat / (np.sqrt(vhat) + 1e-8)
        sigma = max(args.sigma_limit, sigma * args.sigma_decay)
        lrate = lrate * args.lrate_decay
        top = np.sort(np.concatenate([top, fitness]))[: args.top_k]
        gen_time = time.time() - t0
        if args.ckpt_every and (gen + 1) % args.ckpt_every == 0:
            with state_lock:
                save_checkpoint(gen)
        if gen % args.log_every == 0:
            log = {
                "log_top_1": float(top[0]),
                "log_top_mean": float(top.mean()),
                "log_top_std": float(top.std()),
                "log_gen_1": float(fitness.min()),
                "log_gen_mean": float(fitness.mean()),
                "log_gen_std": float(fitness.std()),
                "state/sigma": sigma,
                "state/lrate": lrate,
                "gen_time_s": gen_time,
            }
            if gen % args.eval_every == 0:
                log["test/mse"] = float(np.mean((forward(mean[None], X_te)[0] - y_te) ** 2))
            mlflow.log_metrics(log, step=gen)
            print(
                f"# Gen {gen} | Best: {top[0]:.4f} | Gen mean: {fitness.mean():.4f} | "
                f"sigma: {sigma:.4f}",
                flush=True,
            )
    test = float(np.mean((forward(mean[None], X_te)[0] - y_te) ** 2))
    mlflow.log_metric("test/mse", test, step=args.num_generations)
    print(f"final test MSE of the mean: {test:.4f}", flush=True)
