"""A small pointer-generator (See et al. 2017) trained with the ORIGINAL recipe's components.

    python examples/pointer_generator.py                      # both arms, table + report
    python examples/pointer_generator.py --coverage off --steps 300
    python examples/pointer_generator.py --coverage on --out runs/pg --device cpu

The task ("copy and summarise") is synthetic and deterministic: a source is a sequence of
content words separated by filler words; some content words are out of the vocabulary
(OOV) and get per-example extended ids ``V, V+1, ...`` as in See et al. The summary is the
source's content words in order, fillers dropped, then ``<stop>``: the model must copy,
OOVs included, and must not attend twice to the same word.

Training follows ``trainkit.recipes.original()``: Adagrad (lr 0.15, initial accumulator
0.1), fixed LR, fp32, global-norm clip 2.0, loss ``masked_nll`` (+ ``coverage_loss`` with
weight 1.0 when coverage is on), "Loss is not finite. Stopping.", a running average
(0.99, clip 12) of the validation NLL that selects ``bestmodel.pt``, and time-based
checkpoints (every 60 s, keep 3).

``--coverage both`` (the default) does what See et al. did: train without coverage, then
fine-tune a short while with coverage. The baseline continues for the same number of steps
without coverage, on the same batches, from the same state, so the two arms differ only
by coverage. Both are evaluated on the validation set and reported in
``OUT/coverage_report.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainkit import AMPStep, CheckpointManager, RunningAverage, build_optimizer, coverage_loss, masked_nll, recipes
from trainkit.rng import seed_everything
from trainkit.trainer import NonFiniteLossError

# ------------------------------------------------------------------ vocabulary and task
PAD, UNK, START, STOP = 0, 1, 2, 3
FILLERS = tuple(range(4, 10))  # words the summary drops
CONTENT = tuple(range(10, 40))  # in-vocabulary content words
VOCAB_SIZE = 40  # ids >= VOCAB_SIZE are per-example OOVs (extended vocabulary)
OOV_WORDS = 1000  # the "world" holds this many words outside the vocabulary
DATA_SEED = 1234  # the task's data is fixed; --seed changes init and batch order only


@dataclass
class Split:
    """A padded data split. ``src_ext`` and ``target`` hold extended ids (OOVs >= V).

    Attributes:
        src: ``[N, L]`` encoder input, OOVs replaced by ``UNK``.
        src_ext: ``[N, L]`` source in extended ids (``V + k`` for the example's k-th OOV).
        src_mask: ``[N, L]`` True at real source tokens.
        dec_in: ``[N, T]`` decoder input: ``<start>`` then the summary, OOVs as ``UNK``.
        target: ``[N, T]`` the summary then ``<stop>``, in extended ids.
        dec_mask: ``[N, T]`` 1.0 at valid decoder steps.
        n_oov: ``[N]`` number of distinct OOVs in each source.
    """

    src: torch.Tensor
    src_ext: torch.Tensor
    src_mask: torch.Tensor
    dec_in: torch.Tensor
    target: torch.Tensor
    dec_mask: torch.Tensor
    n_oov: torch.Tensor

    def __len__(self) -> int:
        return self.src.shape[0]

    def take(self, index: torch.Tensor, device: torch.device | str = "cpu") -> Split:
        """The examples at ``index``, trimmed to their longest source/summary, on ``device``."""
        src_len = int(self.src_mask[index].sum(1).max())
        dec_len = int(self.dec_mask[index].sum(1).max())
        fields = {name: getattr(self, name)[index] for name in self.__dataclass_fields__}
        for name in ("src", "src_ext", "src_mask"):
            fields[name] = fields[name][:, :src_len]
        for name in ("dec_in", "target", "dec_mask"):
            fields[name] = fields[name][:, :dec_len]
        return Split(**{name: value.to(device) for name, value in fields.items()})

    @property
    def n_ext(self) -> int:
        """Size of the extended vocabulary these examples need."""
        return VOCAB_SIZE + int(self.n_oov.max())


def make_split(n: int, seed: int, min_words: int = 3, max_words: int = 7, max_fill: int = 3, p_oov: float = 0.3) -> Split:
    """Generate ``n`` copy-and-summarise examples, deterministically from ``seed``.

    Each source holds ``min_words..max_words`` distinct content words, each an OOV with
    probability ``p_oov``, with ``0..max_fill`` filler words before each and after the last.

    Raises:
        ValueError: a count or probability out of range.
    """
    if n < 1 or not (1 <= min_words <= max_words <= len(CONTENT)) or max_fill < 0 or not (0.0 <= p_oov <= 1.0):
        raise ValueError(
            f"need n >= 1, 1 <= min_words <= max_words <= {len(CONTENT)}, max_fill >= 0 and p_oov in [0, 1]; "
            f"got n={n}, min_words={min_words}, max_words={max_words}, max_fill={max_fill}, p_oov={p_oov}"
        )
    rng = np.random.default_rng(seed)
    max_src, max_dec = max_words * (max_fill + 1) + max_fill, max_words + 1
    split = Split(
        src=torch.zeros(n, max_src, dtype=torch.long),
        src_ext=torch.zeros(n, max_src, dtype=torch.long),
        src_mask=torch.zeros(n, max_src, dtype=torch.bool),
        dec_in=torch.zeros(n, max_dec, dtype=torch.long),
        target=torch.zeros(n, max_dec, dtype=torch.long),
        dec_mask=torch.zeros(n, max_dec),
        n_oov=torch.zeros(n, dtype=torch.long),
    )
    for i in range(n):
        count = int(rng.integers(min_words, max_words + 1))
        n_oov = int((rng.random(count) < p_oov).sum())
        words = [int(w) for w in rng.choice(CONTENT, count - n_oov, replace=False)]
        words += [VOCAB_SIZE + int(w) for w in rng.choice(OOV_WORDS, n_oov, replace=False)]
        words = [words[j] for j in rng.permutation(count)]
        oovs = [w for w in words if w >= VOCAB_SIZE]  # order of first appearance -> V, V+1, ...
        ext = {w: VOCAB_SIZE + oovs.index(w) if w >= VOCAB_SIZE else w for w in words}
        source: list[int] = []
        for word in words:
            source += [int(f) for f in rng.choice(FILLERS, int(rng.integers(0, max_fill + 1)))] + [word]
        source += [int(f) for f in rng.choice(FILLERS, int(rng.integers(0, max_fill + 1)))]
        summary = [ext[w] for w in words]
        split.src_ext[i, : len(source)] = torch.tensor([ext.get(w, w) for w in source])
        split.src[i, : len(source)] = torch.tensor([w if w < VOCAB_SIZE else UNK for w in source])
        split.src_mask[i, : len(source)] = True
        split.dec_in[i, : count + 1] = torch.tensor([START] + [w if w < VOCAB_SIZE else UNK for w in summary])
        split.target[i, : count + 1] = torch.tensor(summary + [STOP])
        split.dec_mask[i, : count + 1] = 1.0
        split.n_oov[i] = len(oovs)
    return split


def render(ids: list[int]) -> str:
    """Human-readable tokens: ``w12`` in vocabulary, ``f5`` filler, ``OOV0`` extended id V+0."""
    names = {PAD: "<pad>", UNK: "<unk>", START: "<start>", STOP: "<stop>"}
    out = []
    for i in ids:
        out.append(names.get(i) or (f"OOV{i - VOCAB_SIZE}" if i >= VOCAB_SIZE else f"{'f' if i in FILLERS else 'w'}{i}"))
    return " ".join(out)


# ------------------------------------------------------------------ model
class PointerGenerator(nn.Module):
    """Bi-LSTM encoder, Bahdanau attention decoder with optional coverage, copy via ``p_gen``.

    Args:
        vocab_size: Size ``V`` of the fixed vocabulary (id 0 is padding).
        emb_dim: Word embedding size.
        hidden: LSTM hidden size (the encoder has ``hidden`` per direction).

    Raises:
        ValueError: a size below 1 (``vocab_size`` below 4).
    """

    def __init__(self, vocab_size: int = VOCAB_SIZE, emb_dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        if vocab_size < 4 or emb_dim < 1 or hidden < 1:
            raise ValueError(f"need vocab_size >= 4, emb_dim >= 1, hidden >= 1; got {vocab_size}, {emb_dim}, {hidden}")
        self.vocab_size, self.hidden = vocab_size, hidden
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.encoder = nn.LSTM(emb_dim, hidden, batch_first=True, bidirectional=True)
        self.reduce_h = nn.Linear(2 * hidden, hidden)  # bi-LSTM final state -> decoder init
        self.reduce_c = nn.Linear(2 * hidden, hidden)
        self.w_h = nn.Linear(2 * hidden, 2 * hidden, bias=False)  # attention: W_h h_i
        self.w_s = nn.Linear(2 * hidden, 2 * hidden)  # W_s s_t + b_attn, s_t = [c_t; h_t]
        self.w_c = nn.Parameter(torch.zeros(2 * hidden))  # w_c * coverage (zero: switching on is smooth)
        self.v = nn.Linear(2 * hidden, 1, bias=False)
        self.input_proj = nn.Linear(emb_dim + 2 * hidden, emb_dim)  # x_t = W [emb(y_{t-1}); h*_{t-1}]
        self.cell = nn.LSTMCell(emb_dim, hidden)
        self.p_gen_proj = nn.Linear(2 * hidden + 2 * hidden + emb_dim, 1)  # [h*_t; s_t; x_t]
        self.out1 = nn.Linear(3 * hidden, hidden)  # [h_t; h*_t] -> P_vocab
        self.out2 = nn.Linear(hidden, vocab_size)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Encoder states ``[B, L, 2H]`` and the decoder's initial ``(h, c)``."""
        lengths = src_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(src), lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        h0 = F.relu(self.reduce_h(torch.cat([h[0], h[1]], dim=-1)))
        c0 = F.relu(self.reduce_c(torch.cat([c[0], c[1]], dim=-1)))
        return states, (h0, c0)

    def _step(
        self,
        y_prev: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        context: torch.Tensor,
        cov: torch.Tensor,
        enc: torch.Tensor,
        enc_feat: torch.Tensor,
        src_ext: torch.Tensor,
        src_mask: torch.Tensor,
        n_ext: int,
        use_coverage: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One decoder step: ``(final [B, n_ext], attn [B, L], p_gen [B], state, context)``."""
        x = self.input_proj(torch.cat([self.embedding(y_prev), context], dim=-1))
        h, c = self.cell(x, state)
        s = torch.cat([c, h], dim=-1)
        feat = enc_feat + self.w_s(s).unsqueeze(1)
        if use_coverage:
            feat = feat + cov.unsqueeze(-1) * self.w_c  # See et al.'s w_c c_t^i term
        scores = self.v(torch.tanh(feat)).squeeze(-1).masked_fill(~src_mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        context = torch.bmm(attn.unsqueeze(1), enc).squeeze(1)
        p_gen = torch.sigmoid(self.p_gen_proj(torch.cat([context, s, x], dim=-1))).squeeze(-1)
        p_vocab = torch.softmax(self.out2(self.out1(torch.cat([h, context], dim=-1))), dim=-1)
        final = F.pad(p_gen.unsqueeze(-1) * p_vocab, (0, n_ext - self.vocab_size))  # zero-extended
        final = final.scatter_add(1, src_ext, (1 - p_gen).unsqueeze(-1) * attn)  # copy mass
        return final, attn, p_gen, (h, c), context

    def final_distributions(
        self, batch: Split, use_coverage: bool, n_ext: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced ``(final [B, T, n_ext], attn [B, T, L], p_gen [B, T])``."""
        n_ext = batch.n_ext if n_ext is None else n_ext
        enc, state = self.encode(batch.src, batch.src_mask)
        enc_feat = self.w_h(enc)
        context = enc.new_zeros(enc.shape[0], enc.shape[2])
        cov = enc.new_zeros(enc.shape[:2])
        finals, attns, p_gens = [], [], []
        for t in range(batch.dec_in.shape[1]):
            final, attn, p_gen, state, context = self._step(
                batch.dec_in[:, t], state, context, cov, enc, enc_feat, batch.src_ext, batch.src_mask, n_ext, use_coverage
            )
            cov = cov + attn
            finals.append(final), attns.append(attn), p_gens.append(p_gen)
        return torch.stack(finals, 1), torch.stack(attns, 1), torch.stack(p_gens, 1)

    def forward(self, batch: Split, use_coverage: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``(log final distribution [B, T, V_ext], attention [B, T, L])``."""
        final, attn, _ = self.final_distributions(batch, use_coverage)
        return torch.log(final.clamp(min=1e-12)), attn

    @torch.no_grad()
    def greedy_decode(self, batch: Split, use_coverage: bool, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding: ``(tokens [B, max_steps] in extended ids, attention [B, max_steps, L])``."""
        n_ext = batch.n_ext
        enc, state = self.encode(batch.src, batch.src_mask)
        enc_feat = self.w_h(enc)
        context = enc.new_zeros(enc.shape[0], enc.shape[2])
        cov = enc.new_zeros(enc.shape[:2])
        y = torch.full((enc.shape[0],), START, dtype=torch.long, device=enc.device)
        tokens, attns = [], []
        for _ in range(max_steps):
            final, attn, _, state, context = self._step(
                y, state, context, cov, enc, enc_feat, batch.src_ext, batch.src_mask, n_ext, use_coverage
            )
            cov = cov + attn
            pred = final.argmax(-1)
            tokens.append(pred), attns.append(attn)
            y = torch.where(pred >= self.vocab_size, torch.full_like(pred, UNK), pred)  # OOVs are fed back as UNK
        return torch.stack(tokens, 1), torch.stack(attns, 1)


# ------------------------------------------------------------------ training (original recipe)
def batch_order(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """``[steps, batch_size]`` example indices: epochs of seeded permutations, drop-last."""
    g = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    perms = [torch.randperm(n, generator=g)[: per_epoch * batch_size].view(per_epoch, batch_size) for _ in range(epochs)]
    return torch.cat(perms)[:steps]


@dataclass
class Arm:
    """One training run's state: model, optimizer, AMP step, selection rule, checkpoints."""

    name: str
    model: PointerGenerator
    optimizer: torch.optim.Optimizer
    amp: AMPStep
    averager: RunningAverage
    manager: CheckpointManager
    step: int = 0
    seconds: float = 0.0
    best_step: int = 0
    coverage_steps: int = 0


def new_arm(name: str, model: PointerGenerator, out: Path, recipe: recipes.Recipe, checkpoint_every: float) -> Arm:
    """Wire the original recipe's optimizer, AMP step, running average and checkpoints."""
    optimizer = build_optimizer(model, recipe.optimizer, **recipe.optimizer_kwargs())
    return Arm(
        name=name,
        model=model,
        optimizer=optimizer,
        amp=AMPStep(optimizer, precision=recipe.precision, max_grad_norm=recipe.grad_clip),
        averager=RunningAverage(recipe.running_avg_decay, recipe.running_avg_clip),
        manager=CheckpointManager(out / name, keep_last=recipe.checkpoint_keep, every_seconds=checkpoint_every, pinned=(recipe.best_name,)),
    )


def fork(arm: Arm, name: str, out: Path, recipe: recipes.Recipe, checkpoint_every: float) -> Arm:
    """A copy of ``arm``'s model and optimizer state under a new name and directory.

    Its running average starts afresh, as See et al.'s new eval process did.
    """
    new = new_arm(name, copy.deepcopy(arm.model), out, recipe, checkpoint_every)
    new.optimizer.load_state_dict(copy.deepcopy(arm.optimizer.state_dict()))
    new.step, new.seconds = arm.step, arm.seconds
    return new


def checkpoint_state(arm: Arm, config: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds: plain values and tensors only (``weights_only`` loads it)."""
    return {
        "model": arm.model.state_dict(),
        "optimizer": arm.optimizer.state_dict(),
        "amp": arm.amp.state_dict(),
        "running_avg": arm.averager.state_dict(),
        "step": arm.step,
        "coverage_steps": arm.coverage_steps,
        "config": config,
    }


def train(
    arm: Arm,
    train_data: Split,
    val_batches: list[Split],
    order: torch.Tensor,
    steps: int,
    use_coverage: bool,
    recipe: recipes.Recipe,
    config: dict[str, Any],
    device: torch.device,
) -> None:
    """Run ``steps`` training steps from ``arm.step``, as the original pipeline did.

    Every ``config["eval_every"]`` steps one validation batch's NLL updates the running
    average; when it is a new best the model is saved as ``bestmodel.pt``. A rotating
    checkpoint is written whenever ``every_seconds`` have passed, and at the end.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite ("Loss is not finite. Stopping.").
    """
    cov_wt = recipe.cov_loss_wt or 0.0
    started = time.perf_counter()
    for _ in range(steps):
        arm.model.train()
        batch = train_data.take(order[arm.step], device)
        with arm.amp.autocast():
            log_final, attn = arm.model(batch, use_coverage)
            nll = masked_nll(log_final, batch.target, batch.dec_mask)
            loss = nll + cov_wt * coverage_loss(attn, batch.dec_mask) if use_coverage else nll
        if not torch.isfinite(loss):
            raise NonFiniteLossError("Loss is not finite. Stopping.")
        arm.amp.step(loss)
        arm.step += 1
        arm.coverage_steps += int(use_coverage)
        if arm.step % config["eval_every"] == 0:
            val = val_batches[(arm.step // config["eval_every"]) % len(val_batches)]
            arm.model.eval()
            with torch.no_grad():
                val_log, _ = arm.model(val, use_coverage)
                arm.averager.update(masked_nll(val_log, val.target, val.dec_mask))
            if arm.averager.is_best:
                arm.best_step = arm.step
                arm.manager.save(recipe.best_name, checkpoint_state(arm, config))
        if arm.manager.due():
            arm.manager.save(f"ckpt-{arm.step:06d}.pt", checkpoint_state(arm, config))
    arm.seconds += time.perf_counter() - started
    arm.manager.save(f"ckpt-{arm.step:06d}.pt", checkpoint_state(arm, config))


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: PointerGenerator, batches: list[Split], use_coverage: bool) -> dict[str, float]:
    """Validation figures of one model.

    - ``val_nll``: teacher-forced ``masked_nll``.
    - ``val_coverage_loss``: ``coverage_loss`` of the teacher-forced attention, i.e. the mean
      per step of ``sum_l min(a_t, c_t)``: how much attention goes where it already went.
    - Greedy decoding (until ``<stop>``): ``token_accuracy`` (per target token, ``<stop>``
      included), ``exact_match``, ``oov_accuracy`` (target OOV tokens produced in place),
      ``repeated_attention`` (fraction of decoded word steps whose attention argmax is an
      earlier step's argmax), ``repeated_words`` (decoded words already decoded earlier;
      summaries never repeat a word) and ``missing_words`` (fraction of summary words that
      the decoded sequence never produces).
    """
    model.eval()
    sums = dict.fromkeys(("nll", "cov", "correct", "tokens", "exact", "seqs", "oov_ok", "oovs", "rep_attn", "rep_word", "steps", "missing", "words"), 0.0)
    for batch in batches:
        size = len(batch)
        log_final, attn = model(batch, use_coverage)
        sums["nll"] += float(masked_nll(log_final, batch.target, batch.dec_mask)) * size
        sums["cov"] += float(coverage_loss(attn, batch.dec_mask)) * size
        tokens, dec_attn = model.greedy_decode(batch, use_coverage, max_steps=batch.target.shape[1] + 2)
        valid = batch.dec_mask.bool()
        hit = (tokens[:, : batch.target.shape[1]] == batch.target) & valid
        sums["correct"] += float(hit.sum())
        sums["tokens"] += float(valid.sum())
        sums["exact"] += float((hit.sum(1) == valid.sum(1)).sum())
        sums["seqs"] += size
        is_oov = (batch.target >= VOCAB_SIZE) & valid
        sums["oov_ok"] += float((hit & is_oov).sum())
        sums["oovs"] += float(is_oov.sum())
        where = dec_attn.argmax(-1)
        for b in range(size):
            seen_pos: set[int] = set()
            seen_word: set[int] = set()
            for t in range(tokens.shape[1]):
                word = int(tokens[b, t])
                if word == STOP:
                    break
                sums["steps"] += 1
                sums["rep_attn"] += int(where[b, t]) in seen_pos
                sums["rep_word"] += word in seen_word
                seen_pos.add(int(where[b, t]))
                seen_word.add(word)
            summary = set(batch.target[b][valid[b]].tolist()) - {STOP}
            sums["missing"] += len(summary - seen_word)
            sums["words"] += len(summary)
    steps = max(sums["steps"], 1.0)
    return {
        "val_nll": sums["nll"] / sums["seqs"],
        "val_coverage_loss": sums["cov"] / sums["seqs"],
        "token_accuracy": sums["correct"] / sums["tokens"],
        "exact_match": sums["exact"] / sums["seqs"],
        "oov_accuracy": sums["oov_ok"] / max(sums["oovs"], 1.0),
        "repeated_attention": sums["rep_attn"] / steps,
        "repeated_words": sums["rep_word"] / steps,
        "missing_words": sums["missing"] / sums["words"],
        "decoded_steps": int(sums["steps"]),
    }


def best_model(arm: Arm, recipe: recipes.Recipe, device: torch.device) -> PointerGenerator:
    """The model saved as ``bestmodel.pt`` (loaded safely), or the current one if none was saved."""
    model = copy.deepcopy(arm.model)
    if (arm.manager.directory / recipe.best_name).is_file():
        model.load_state_dict(arm.manager.load(recipe.best_name, map_location=device)["model"])
    return model


# ------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coverage", choices=("on", "off", "both"), default="both", help="default: both")
    parser.add_argument("--steps", type=int, default=600, help="training steps per arm (default: 600)")
    parser.add_argument("--coverage-steps", type=int, default=150, help="the last N steps train with coverage (default: 150)")
    parser.add_argument("--cov-loss-wt", type=float, help="coverage loss weight (default: the recipe's 1.0)")
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument("--train-size", type=int, default=4000, help="training examples (default: 4000)")
    parser.add_argument("--val-size", type=int, default=500, help="validation examples (default: 500)")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between validation batches (default: 10)")
    parser.add_argument("--checkpoint-every", type=float, help="seconds between checkpoints (default: the recipe's 60)")
    parser.add_argument("--seed", type=int, default=42, help="model init and batch order (default: 42)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default: cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; 1 is fastest for this tiny model (default: 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/pointer_generator"), help="default: runs/pointer_generator")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "train_size", "val_size", "eval_every", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.coverage_steps <= args.steps or (args.coverage != "off" and args.coverage_steps == 0):
        parser.error(f"--coverage-steps must be in [1, --steps={args.steps}] (0 only with --coverage off), got {args.coverage_steps}")
    if args.train_size < args.batch_size:
        parser.error(f"--train-size ({args.train_size}) must be >= --batch-size ({args.batch_size})")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.cov_loss_wt is not None and not 0 <= args.cov_loss_wt < float("inf"):
        parser.error(f"--cov-loss-wt must be a finite number >= 0, got {args.cov_loss_wt}")
    if args.checkpoint_every is not None and not args.checkpoint_every > 0:
        parser.error(f"--checkpoint-every must be > 0, got {args.checkpoint_every}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> int:
    """Train the requested arm(s), print the table and write ``OUT/coverage_report.json``."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # restored on return: main() may run inside a test
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    """The body of :func:`main`, for parsed arguments."""
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    recipe = recipes.original()
    if args.cov_loss_wt is not None:
        recipe = recipe.replace(cov_loss_wt=args.cov_loss_wt)
    every = recipe.checkpoint_every_seconds if args.checkpoint_every is None else args.checkpoint_every
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.mkdir(parents=True, exist_ok=True)

    train_data = make_split(args.train_size, DATA_SEED)
    val_data = make_split(args.val_size, DATA_SEED + 1)
    val_batches = [val_data.take(torch.arange(i, min(i + 100, len(val_data))), device) for i in range(0, len(val_data), 100)]
    order = batch_order(len(train_data), args.batch_size, args.steps, args.seed)
    seed_everything(args.seed)
    model = PointerGenerator().to(device)

    # Both arms share the first steps - coverage_steps steps without coverage (See et al.).
    arms: dict[str, tuple[Arm, bool]] = {}
    shared = args.steps - (args.coverage_steps if args.coverage != "off" else 0)
    start = new_arm("no_coverage", model, args.out, recipe, every)
    try:
        train(start, train_data, val_batches, order, shared, False, recipe, config, device)
        if args.coverage in ("on", "both"):
            cov = fork(start, "coverage", args.out, recipe, every)
            train(cov, train_data, val_batches, order, args.coverage_steps, True, recipe, config, device)
            arms["coverage"] = (cov, True)
        if args.coverage in ("off", "both"):
            train(start, train_data, val_batches, order, args.steps - shared, False, recipe, config, device)
            arms["no_coverage"] = (start, False)
    except NonFiniteLossError as exc:
        print(exc, file=sys.stderr)
        return 1

    report: dict[str, Any] = {"config": config, "recipe": recipe.name, "device": str(device), "runs": {}}
    for name in ("no_coverage", "coverage"):
        if name in arms:
            arm, use_coverage = arms[name]
            figures = evaluate(best_model(arm, recipe, device), val_batches, use_coverage)
            report["runs"][name] = {
                "steps": arm.step,
                "coverage_steps": arm.coverage_steps,
                "best_step": arm.best_step,
                "train_seconds": round(arm.seconds, 2),
                **figures,
            }
    (args.out / "coverage_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report["runs"])
    print(f"report: {args.out / 'coverage_report.json'}")
    return 0


def print_table(runs: dict[str, dict[str, Any]]) -> None:
    """One row per arm, on the validation set (best model)."""
    columns = {
        "val_nll": "val NLL",
        "token_accuracy": "token acc",
        "exact_match": "exact",
        "oov_accuracy": "OOV acc",
        "val_coverage_loss": "cov loss",
        "repeated_attention": "rep attn",
        "repeated_words": "rep words",
        "missing_words": "missing",
    }
    print(f"{'arm':<12} {'steps':>5} {'cov steps':>9} " + " ".join(f"{title:>9}" for title in columns.values()))
    for name, run in runs.items():
        cells = " ".join(f"{run[key]:>9.4f}" for key in columns)
        print(f"{name:<12} {run['steps']:>5} {run['coverage_steps']:>9} {cells}")


if __name__ == "__main__":
    sys.exit(main())
