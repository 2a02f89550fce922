"""An online regressor trained and scored as River's ``evaluate.progressive_val_score`` does
(River's bike-sharing example: predict each station's available bikes from the weather), the
progress lines it prints mirrored to MLflow by the team's runner.

Plain numpy + the standard library + the plain ``mlflow`` API (no River here).  What is
imitated:

* the model of River's ``Bikes`` example::

      model = compose.Select('clouds', 'humidity', 'pressure', 'temperature', 'wind')
      model += (get_hour | feature_extraction.TargetAgg(by=['station', 'hour'], how=stats.Mean()))
      model += feature_extraction.TargetAgg(by='station', how=stats.EWMean(0.5))
      model |= preprocessing.StandardScaler()
      model |= linear_model.LinearRegression(optimizer=optim.SGD(lr), intercept_lr=...)

  with River's one-sample semantics: ``StandardScaler.learn_one`` updates running means and
  variances (Welford) and ``transform_one`` scales with them; ``TargetAgg`` aggregates the
  targets seen so far per key; ``LinearRegression`` learns with the squared loss, its gradient
  clipped at ``clip_gradient`` (1e12);
* ``evaluate.progressive_val_score(dataset, model, metric, print_every, measure_time=True,
  measure_memory=True)``: every sample is first predicted, then learnt (test-then-train); the
  metric ``metrics.MAE() + metrics.RMSE()`` is updated since the first sample; every
  ``print_every`` samples River prints ``[20,000] MAE: 2.351, RMSE: 3.402 – 00:00:04.21 – 12.3
  KB``; the team's runner logs each printed line at ``step = samples seen``: ``MAE``, ``RMSE``,
  ``elapsed_seconds`` (since the start), ``memory_kb``, and adds ``rolling_MAE`` (a
  ``utils.Rolling(metrics.MAE(), window_size)``) and ``samples_per_second`` (of the last
  ``print_every`` samples, reading included);
* ``stream.iter_csv`` over the city's ``station_metrics.csv.gz`` dump, in time order.

Data: a generated bike-sharing city (``n_stations`` stations, one reading per station every 15
minutes, the weather shared by the city; the bikes at a station follow the hour of the day, the
station, the temperature and the clouds, with noise), written as a gzip'd CSV at start.

The team's additions: ``--checkpoint_every`` (the model is pickled every that many samples, as
their serving job reloads it); ``--hour_fn`` (how get_hour is defined: ``def`` or ``lambda``);
``--reader`` (``stream``: River's ``iter_csv``; ``resumable``: the team's reader that can resume
after a restart, opening the dump and skipping the rows already read for every chunk of
``chunk_rows``).  Written without looking at the doctor.

Faults are real settings and data: ``--lr``; ``--pressure_pa_from`` (from that sample on the
weather feed's v2 reports the pressure in Pa, not hPa); ``--reader resumable``; ``--hour_fn
lambda`` with ``--checkpoint_every``.
"""

import csv
import gzip
import math
import pickle
import time

import _setup
import mlflow
import numpy as np

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_stations": 8,
        "--n_days": 60,
        "--print_every": 2000,
        "--window_size": 1000,
        "--lr": 0.01,
        "--intercept_lr": 0.01,
        "--clip_gradient": 1e12,
        "--ewm_alpha": 0.5,
        "--noise": 2.0,
        "--reader": "stream",  # stream | resumable
        "--chunk_rows": 200,
        "--checkpoint_every": 0,
        "--hour_fn": "def",  # def | lambda
        "--pressure_pa_from": 0,  # 0: hPa throughout
    }
)
rng = _setup.seeded(args.seed, torch=False)

# ----------------------------------------------------------------------------- data
FEATURES = ("clouds", "humidity", "pressure", "temperature", "wind")
cap = rng.integers(15, 35, args.n_stations)
peak = rng.uniform(6, 20, args.n_stations)
amp = rng.uniform(0.2, 0.45, args.n_stations)
PATH = "station_metrics.csv.gz"
n_rows = 0
with gzip.open(PATH, "wt", newline="") as f:
    w = csv.writer(f)
    w.writerow(("moment", "station") + FEATURES + ("bikes",))
    pressure, temp_base = 1013.0, 15.0
    for slot in range(args.n_days * 96):
        hour = (slot % 96) / 4
        day = slot // 96
        pressure = float(np.clip(pressure + rng.normal(0, 0.6), 985, 1040))
        temp = temp_base + 6 * math.sin((hour - 9) / 24 * 2 * math.pi) + rng.normal(0, 1.0)
        temp += 4 * math.sin(day / 9)
        clouds = float(np.clip(50 + 40 * math.sin(day / 3 + hour / 7) + rng.normal(0, 10), 0, 100))
        humidity = float(np.clip(70 - 1.5 * (temp - 15) + rng.normal(0, 5), 10, 100))
        wind = float(abs(rng.normal(4, 2)))
        for s in range(args.n_stations):
            day_cycle = math.cos((hour - peak[s]) / 24 * 2 * math.pi)
            mean = cap[s] * (0.5 + amp[s] * day_cycle) + 0.15 * (temp - 15) - 0.03 * clouds
            bikes = int(np.clip(round(mean + rng.normal(0, args.noise)), 0, cap[s]))
            moment = f"2026-01-01T+{slot * 15}min"
            w.writerow((moment, f"station_{s}", clouds, humidity, pressure, temp, wind, bikes))
            n_rows += 1


def parse(row):
    x = {"moment": row["moment"], "station": row["station"]}
    for k in FEATURES:
        x[k] = float(row[k])
    return x, float(row["bikes"])


def iter_csv():
    with gzip.open(PATH, "rt", newline="") as f:
        for row in csv.DictReader(f):
            yield parse(row)


def iter_resumable():
    done = 0
    while done < n_rows:
        with gzip.open(PATH, "rt", newline="") as f:  # reopened to resume at `done`
            reader = csv.DictReader(f)
            for _ in range(done):
                next(reader)
            for _ in range(min(args.chunk_rows, n_rows - done)):
                yield parse(next(reader))
                done += 1


# ----------------------------------------------------------------------------- model
def get_hour_def(x):
    x["hour"] = int(x["moment"].split("+")[1][:-3]) // 60 % 24
    return x


get_hour = get_hour_def if args.hour_fn == "def" else (lambda x: get_hour_def(x))  # noqa: E731


class Pipeline:
    def __init__(self):
        self.agg_sh = {}  # TargetAgg(by=['station', 'hour'], how=stats.Mean())
        self.agg_s = {}  # TargetAgg(by='station', how=stats.EWMean(alpha))
        self.n, self.mean, self.m2 = 0, np.zeros(7), np.zeros(7)
        self.w, self.b = np.zeros(7), 0.0
        self.get_hour = get_hour

    def features(self, x):
        x = self.get_hour(dict(x))
        m = self.agg_sh.get((x["station"], x["hour"]), (0, 0.0))[1]
        e = self.agg_s.get(x["station"], 0.0)
        return np.array([x[k] for k in FEATURES] + [m, e]), x

    def scale(self, v):
        var = self.m2 / self.n if self.n else np.zeros(7)
        return np.where(var > 0, (v - self.mean) / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)

    def predict_one(self, x):
        v, _ = self.features(x)
        return float(self.w @ self.scale(v) + self.b)

    def learn_one(self, x, y):
        v, xh = self.features(x)
        self.n += 1  # StandardScaler.learn_one before transform_one, as River's pipeline does
        d = v - self.mean
        self.mean = self.mean + d / self.n
        self.m2 = self.m2 + d * (v - self.mean)
        z = self.scale(v)
        g = float(np.clip((self.w @ z + self.b) - y, -args.clip_gradient, args.clip_gradient))
        self.w = self.w - args.lr * g * z
        self.b -= args.intercept_lr * g
        k = (xh["station"], xh["hour"])
        c, mu = self.agg_sh.get(k, (0, 0.0))
        self.agg_sh[k] = (c + 1, mu + (y - mu) / (c + 1))
        e = self.agg_s.get(xh["station"])
        self.agg_s[xh["station"]] = (
            y if e is None else args.ewm_alpha * y + (1 - args.ewm_alpha) * e
        )

    def memory_kb(self):
        return (len(self.agg_sh) * 104 + len(self.agg_s) * 88 + 7 * 8 * 4 + 240) / 1024


with mlflow.start_run():
    mlflow.log_params(vars(args))
    model = Pipeline()
    dataset = iter_csv() if args.reader == "stream" else iter_resumable()
    abs_sum = sq_sum = 0.0
    window = []
    start = last = time.time()
    for n, (x, y) in enumerate(dataset, 1):
        if args.pressure_pa_from and n >= args.pressure_pa_from:
            x["pressure"] *= 100.0  # the weather feed's v2: Pa
        y_pred = model.predict_one(x)
        model.learn_one(x, y)
        err = abs(y_pred - y)
        abs_sum += err
        sq_sum += err * err
        window = window[-(args.window_size - 1) :] + [err]
        if args.checkpoint_every and n % args.checkpoint_every == 0:
            with open("model.pkl", "wb") as f:
                pickle.dump(model, f)
            print(f"checkpoint: model.pkl at {n:,} samples", flush=True)
        if n % args.print_every == 0:
            now = time.time()
            mae, rmse = abs_sum / n, math.sqrt(sq_sum / n)
            el = now - start
            mem = model.memory_kb()
            print(
                f"[{n:,}] MAE: {mae:.6f}, RMSE: {rmse:.6f} – "
                f"{int(el // 3600):02d}:{int(el // 60 % 60):02d}:{el % 60:05.2f} – {mem:.2f} KB",
                flush=True,
            )
            mlflow.log_metrics(
                {
                    "MAE": mae,
                    "RMSE": rmse,
                    "rolling_MAE": float(np.mean(window)),
                    "elapsed_seconds": el,
                    "memory_kb": mem,
                    "samples_per_second": args.print_every / max(1e-9, now - last),
                },
                step=n,
            )
            last = now
