"""A small encoder-decoder translation model fine-tuned as transformers'
``examples/pytorch/translation/run_translation_no_trainer.py`` trains one, with
``--with_tracking --report_to mlflow``: 🤗 Accelerate's ``MLflowTracker`` gets the script's
``accelerator.log`` calls name for name.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Accelerate, no transformers here).  What
is imitated, as the script and ``accelerate.tracking.MLflowTracker`` log it:

* ``accelerator.init_trackers("translation_no_trainer", experiment_config)``: the script's
  arguments as run params (``MLflowTracker.store_init_configuration``);
* once per epoch, after generating translations of the validation set and scoring them with
  ``evaluate.load("sacrebleu")``: ``accelerator.log({"bleu": eval_metric["score"],
  "train_loss": total_loss.item() / len(train_dataloader), "epoch": epoch, "step":
  completed_steps}, step=completed_steps)``, which the tracker writes with
  ``mlflow.log_metrics(..., step=completed_steps)``: nothing per step, no validation loss,
  ``bleu`` on sacreBLEU's 0-100 scale, ``epoch`` from 0;
* the script's loop: AdamW (``--learning_rate`` 2e-3 here, ``--weight_decay``),
  ``get_scheduler(args.lr_scheduler_type, num_warmup_steps=..., num_training_steps=...)``,
  ``--gradient_accumulation_steps``, ``--max_source_length`` / ``--max_target_length``
  truncation in the preprocessing, greedy (``--num_beams 1``) generation up to
  ``--val_max_target_length``; its log lines (``***** Running training *****``,
  ``{'bleu': ...}``).

Data: a generated parallel corpus (``--source_lang src --target_lang tgt``): sentences of a
small source grammar (determiner, noun, adjective after the noun, verb, object, optional
prepositional phrase) and their translations in a target grammar (adjectives before nouns,
verb last, compounds of two target words for some source words); a few sentences are long
run-ons (up to ~90 tokens).  ``--curriculum_epochs``: the team's length curriculum trains on
the short sentences only for the first epochs.  Model: a 2+2-layer Transformer with learned
positions (``max_position_embeddings`` 64) and tied output embeddings.  Written without
looking at the doctor.

Faults are real code paths and data: ``--learning_rate`` typed far too large;
``--freeze_encoder``: the team's port of the seq2seq examples' flag freezes ``model.tf``, the
whole ``nn.Transformer`` (encoder *and* decoder), leaving only the tied embeddings and the
positions to train; ``--target_skip_lines 2`` (the count of an older export with two header
lines) on a target file with one, so every source sentence is paired with the next
sentence's translation; ``--max_source_length`` raised past the model's 64 positions, which
the long sentences then overrun once the curriculum lets them in.
"""

import math
import time
from collections import Counter

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 42,
        "--source_lang": "src",
        "--target_lang": "tgt",
        "--num_train_pairs": 1600,
        "--max_eval_samples": 100,
        "--max_source_length": 64,
        "--max_target_length": 64,
        "--val_max_target_length": 40,
        "--num_beams": 1,
        "--per_device_train_batch_size": 32,
        "--per_device_eval_batch_size": 100,
        "--learning_rate": 2e-3,
        "--weight_decay": 0.01,
        "--num_train_epochs": 10,
        "--gradient_accumulation_steps": 1,
        "--lr_scheduler_type": "linear",
        "--num_warmup_steps": 50,
        "--d_model": 64,
        "--num_layers": 2,
        "--dropout": 0.1,
        "--curriculum_epochs": 0,
        "--target_skip_lines": 1,
        "--freeze_encoder": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- corpus
N_NOUN, N_ADJ, N_VERB, N_PREP = 30, 12, 16, 4
src_words = (
    [f"n{i}" for i in range(N_NOUN)]
    + [f"a{i}" for i in range(N_ADJ)]
    + [f"v{i}" for i in range(N_VERB)]
    + [f"p{i}" for i in range(N_PREP)]
    + ["the", "a", "and"]
)
# the target lexicon: one word each, two for a fifth of the nouns (compounds)
lex = {w: [f"T{w}"] for w in src_words}
for i in rng.choice(N_NOUN, N_NOUN // 5, replace=False):
    lex[f"n{i}"] = [f"T{i}x", f"T{i}y"]
lex["the"], lex["a"], lex["and"] = ["DEF"], ["IND"], ["UND"]


def noun_phrase():
    det = "the" if rng.random() < 0.6 else "a"
    n = f"n{rng.integers(N_NOUN)}"
    adjs = [f"a{rng.integers(N_ADJ)}" for _ in range(int(rng.integers(0, 2)))]
    src = [det, n] + adjs  # source: adjectives after the noun
    tgt = lex[det] + sum((lex[a] for a in adjs), []) + lex[n]  # target: before it
    return src, tgt


def clause():
    s_src, s_tgt = noun_phrase()
    o_src, o_tgt = noun_phrase()
    v = f"v{rng.integers(N_VERB)}"
    src, tgt = s_src + [v] + o_src, s_tgt + o_tgt + lex[v]  # target: verb last
    if rng.random() < 0.4:
        p = f"p{rng.integers(N_PREP)}"
        pp_src, pp_tgt = noun_phrase()
        src, tgt = src + [p] + pp_src, tgt + pp_tgt + lex[p]  # postpositions
    return src, tgt


def sentence():
    n_clauses = int(rng.integers(6, 10)) if rng.random() < 0.02 else 1  # run-ons
    src, tgt = clause()
    for _ in range(n_clauses - 1):
        s, t = clause()
        src, tgt = src + ["and"] + s, tgt + ["UND"] + t
    return src, tgt


pairs = [sentence() for _ in range(args.num_train_pairs + args.max_eval_samples + 1)]
# the export: one file per language, one sentence a line; the target file starts with a
# header line ("tgt") that the source file lacks
src_lines = [" ".join(s) for s, _ in pairs]
tgt_lines = [args.target_lang] + [" ".join(t) for _, t in pairs]
tgt_lines = tgt_lines[args.target_skip_lines :]  # the script's header handling
raw = list(zip(src_lines, tgt_lines, strict=False))  # the shorter file ends it
eval_raw = [p for p in raw[: args.max_eval_samples * 3] if len(p[0].split()) < 30][
    : args.max_eval_samples
]
train_raw = raw[args.max_eval_samples * 3 :][: args.num_train_pairs]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
vocab = ["<pad>", "<s>", "</s>", "<unk>"] + sorted(
    {w for s, t in raw for w in s.split() + t.split()}
)
stoi = {w: i for i, w in enumerate(vocab)}


def encode(text, max_len):
    ids = [stoi.get(w, UNK) for w in text.split()][: max_len - 1] + [EOS]
    return ids


def preprocess(rows):
    return [(encode(s, args.max_source_length), encode(t, args.max_target_length)) for s, t in rows]


train_ds, eval_ds = preprocess(train_raw), preprocess(eval_raw)


def collate(batch):
    sl, tl = max(len(s) for s, _ in batch), max(len(t) for _, t in batch)
    src = torch.full((len(batch), sl), PAD)
    labels = torch.full((len(batch), tl), -100)
    for j, (s, t) in enumerate(batch):
        src[j, : len(s)] = torch.tensor(s)
        labels[j, : len(t)] = torch.tensor(t)
    return src, labels


# ----------------------------------------------------------------------------- model
class Seq2Seq(nn.Module):
    max_position_embeddings = 64

    def __init__(self):
        super().__init__()
        d = args.d_model
        self.embed = nn.Embedding(len(vocab), d, padding_idx=PAD)
        self.pos = nn.Embedding(self.max_position_embeddings, d)
        self.tf = nn.Transformer(
            d, 4, args.num_layers, args.num_layers, 2 * d, args.dropout, batch_first=True
        )
        self.scale = math.sqrt(d)
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        nn.init.normal_(self.pos.weight, std=0.02)

    def emb(self, ids):
        positions = torch.arange(ids.shape[1])
        return self.embed(ids) * self.scale + self.pos(positions)

    def forward(self, src, dec_in):
        mask = nn.Transformer.generate_square_subsequent_mask(dec_in.shape[1])
        h = self.tf(
            self.emb(src),
            self.emb(dec_in),
            tgt_mask=mask,
            src_key_padding_mask=src == PAD,
            tgt_key_padding_mask=dec_in == PAD,
            memory_key_padding_mask=src == PAD,
        )
        return h @ self.embed.weight.T

    def loss(self, src, labels):
        dec_in = torch.cat([torch.full((len(labels), 1), BOS), labels[:, :-1]], 1)
        dec_in = dec_in.masked_fill(dec_in == -100, PAD)
        logits = self(src, dec_in)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    @torch.no_grad()
    def generate(self, src, max_length):
        memory = self.tf.encoder(self.emb(src), src_key_padding_mask=src == PAD)
        out = torch.full((len(src), 1), BOS)
        done = torch.zeros(len(src), dtype=torch.bool)
        for _ in range(max_length - 1):
            mask = nn.Transformer.generate_square_subsequent_mask(out.shape[1])
            h = self.tf.decoder(
                self.emb(out), memory, tgt_mask=mask, memory_key_padding_mask=src == PAD
            )
            nxt = (h[:, -1] @ self.embed.weight.T).argmax(-1)
            nxt = nxt.masked_fill(done, PAD)
            out = torch.cat([out, nxt[:, None]], 1)
            done |= nxt == EOS
            if done.all():
                break
        return out[:, 1:]


def corpus_bleu(hyps, refs, max_n=4):
    """sacreBLEU's corpus score (13a-like whitespace tokens, no smoothing needed: 'exp')."""
    match, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs, strict=True):
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0:
        return 0.0
    precisions, smooth = [], 1.0
    for m, t in zip(match, total, strict=True):
        if t == 0:
            precisions.append(0.0)
        elif m == 0:  # sacreBLEU's 'exp' smoothing
            smooth *= 2
            precisions.append(100.0 / (smooth * t))
        else:
            precisions.append(100.0 * m / t)
    if min(precisions) <= 0:
        return 0.0
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(sum(math.log(p) for p in precisions) / max_n)


def decode(ids):
    words = []
    for i in ids:
        if i in (EOS, PAD):
            break
        words.append(vocab[i])
    return words


model = Seq2Seq()


def freeze_params(module):  # the seq2seq examples' utils.freeze_params
    for p in module.parameters():
        p.requires_grad = False


if args.freeze_encoder:  # the team's port of finetune.py's --freeze_encoder
    freeze_params(model.tf)
no_decay = ["bias", "norm"]
groups = [
    {
        "params": [
            p
            for n, p in model.named_parameters()
            if p.requires_grad and not any(nd in n for nd in no_decay)
        ],
        "weight_decay": args.weight_decay,
    },
    {
        "params": [
            p
            for n, p in model.named_parameters()
            if p.requires_grad and any(nd in n for nd in no_decay)
        ],
        "weight_decay": 0.0,
    },
]
optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
bs = args.per_device_train_batch_size
n_batches = math.ceil(len(train_ds) / bs)
num_update_steps_per_epoch = math.ceil(n_batches / args.gradient_accumulation_steps)
max_train_steps = args.num_train_epochs * num_update_steps_per_epoch


def lr_lambda(step):  # transformers.get_scheduler
    if step < args.num_warmup_steps:
        return step / max(1, args.num_warmup_steps)
    if args.lr_scheduler_type == "constant_with_warmup":
        return 1.0
    progress = (step - args.num_warmup_steps) / max(1, max_train_steps - args.num_warmup_steps)
    if args.lr_scheduler_type == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
short = [i for i, (s, _) in enumerate(train_ds) if len(s) <= 24]
print("***** Running training *****", flush=True)
print(f"  Num examples = {len(train_ds)}", flush=True)
print(f"  Num Epochs = {args.num_train_epochs}", flush=True)
print(f"  Instantaneous batch size per device = {bs}", flush=True)
print(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}", flush=True)
print(f"  Total optimization steps = {max_train_steps}", flush=True)
with mlflow.start_run():
    mlflow.log_params(vars(args))  # init_trackers("translation_no_trainer", experiment_config)
    completed_steps, t_start = 0, time.time()
    for epoch in range(args.num_train_epochs):
        model.train()
        total_loss = 0.0
        pool = short if epoch < args.curriculum_epochs else range(len(train_ds))
        order = rng.permutation(np.array(pool))
        batches = [order[k : k + bs] for k in range(0, len(order), bs)]
        for step, idx in enumerate(batches):
            src, labels = collate([train_ds[i] for i in idx])
            loss = model.loss(src, labels)
            total_loss += loss.detach().float().item()
            (loss / args.gradient_accumulation_steps).backward()
            if step % args.gradient_accumulation_steps == 0 or step == len(batches) - 1:
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                completed_steps += 1
        model.eval()
        hyps, refs = [], []
        for k in range(0, len(eval_ds), args.per_device_eval_batch_size):
            src, labels = collate(eval_ds[k : k + args.per_device_eval_batch_size])
            generated = model.generate(src, args.val_max_target_length)
            hyps += [decode(g.tolist()) for g in generated]
            refs += [decode([i for i in lab.tolist() if i != -100]) for lab in labels]
        bleu = corpus_bleu(hyps, refs)
        print(f"epoch {epoch}: {{'bleu': {bleu}}}", flush=True)
        print(f"  sample: {' '.join(hyps[0])}  ||  {' '.join(refs[0])}", flush=True)
        # accelerator.log(..., step=completed_steps) -> MLflowTracker.log
        mlflow.log_metrics(
            {
                "bleu": bleu,
                "train_loss": total_loss / len(batches),
                "epoch": epoch,
                "step": completed_steps,
            },
            step=completed_steps,
        )
    print(f"  training took {time.time() - t_start:.1f}s", flush=True)
