"""A small pointer-generator (See et al. 2017) trained with the original recipe's components.

    python examples/pointer_generator.py                       # both arms: table + report
    python examples/pointer_generator.py --coverage off --steps 300
    python examples/pointer_generator.py --coverage on --out runs/pg --seed 1

The task ("copy and summarise") is synthetic and deterministic. A source is a sequence of
distinct content words with filler words around them; some content words are outside the
vocabulary (OOV) and get per-example extended ids ``V, V+1, ...`` as in See et al. The
summary is the source's content words in order, fillers dropped, then ``<stop>``: the model
must copy (OOVs can only be copied) and should attend to each word once.

Training follows ``trainkit.recipes.original()``: Adagrad (lr 0.15, initial accumulator
0.1) at a fixed LR, fp32, global-norm clip 2.0, loss ``masked_nll`` (+ 1.0 x
``coverage_loss`` with coverage on), "Loss is not finite. Stopping.", a running average
(decay 0.99, clip 12) of the validation NLL that selects ``bestmodel.pt``, and time-based
checkpoints (every 60 s, keep 3).

``--coverage both`` (the default) does what See et al. did: train without coverage, then
turn coverage on for the last ``--coverage-steps`` steps. The baseline arm continues from
the same state for the same steps on the same batches without coverage, so the two arms
differ only by coverage. Both arms' best models are evaluated on the validation set; the
figures are printed and written to ``OUT/coverage_report.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainkit import AMPStep, CheckpointManager, RunningAverage, build_optimizer, coverage_loss, masked_nll, recipes
from trainkit.rng import seed_everything
from trainkit.nonfinite import NonFiniteLossError

# ------------------------------------------------------------------ vocabulary and task
PAD, UNK, START, STOP = 0, 1, 2, 3
FILLERS = tuple(range(4, 10))  # words the summary drops
CONTENT = tuple(range(10, 40))  # in-vocabulary content words
VOCAB_SIZE = 40  # V; extended ids V, V+1, ... name each example's OOVs
OOV_WORDS = 1000  # the world's words outside the vocabulary (raw words -1 .. -1000)
DATA_SEED = 1234  # the task's data is fixed; --seed changes the init and batch order only


@dataclass
class Split:
    """Padded examples. ``src_ext`` and ``target`` hold extended ids (an OOV is ``>= V``).

    Attributes:
        src: ``[N, L]`` encoder input, OOVs replaced by ``UNK``.
        src_ext: ``[N, L]`` the source in extended ids (``V + k``: the example's k-th OOV).
        src_mask: ``[N, L]`` True at real source tokens.
        dec_in: ``[N, T]`` decoder input: ``<start>`` then the summary, OOVs as ``UNK``.
        target: ``[N, T]`` the summary then ``<stop>``, in extended ids.
        dec_mask: ``[N, T]`` 1.0 at valid decoder steps.
        n_oov: ``[N]`` distinct OOVs in each source.
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

    @property
    def n_ext(self) -> int:
        """Size of the extended vocabulary these examples need."""
        return VOCAB_SIZE + int(self.n_oov.max())

    def take(self, index: torch.Tensor, device: torch.device | str = "cpu") -> Split:
        """The examples at ``index``, trimmed to their longest source and summary, on ``device``."""
        src_len, dec_len = int(self.src_mask[index].sum(1).max()), int(self.dec_mask[index].sum(1).max())
        fields = {name: getattr(self, name)[index] for name in self.__dataclass_fields__}
        for name in ("src", "src_ext", "src_mask"):
            fields[name] = fields[name][:, :src_len]
        for name in ("dec_in", "target", "dec_mask"):
            fields[name] = fields[name][:, :dec_len]
        return Split(**{name: value.to(device) for name, value in fields.items()})


def make_split(
    n: int, seed: int, min_words: int = 3, max_words: int = 7, max_fill: int = 3, p_oov: float = 0.3
) -> Split:
    """Generate ``n`` copy-and-summarise examples, deterministically from ``seed``.

    Each source holds ``min_words..max_words`` distinct content words, each an OOV with
    probability ``p_oov``, with ``0..max_fill`` filler words before each word and at the end.

    Raises:
        ValueError: a count or probability out of range.
    """
    if n < 1 or not 1 <= min_words <= max_words <= len(CONTENT) or max_fill < 0 or not 0.0 <= p_oov <= 1.0:
        raise ValueError(
            f"need n >= 1, 1 <= min_words <= max_words <= {len(CONTENT)}, max_fill >= 0, p_oov in [0, 1]; got "
            f"n={n}, min_words={min_words}, max_words={max_words}, max_fill={max_fill}, p_oov={p_oov}"
        )
    rng = np.random.default_rng(seed)
    max_src, max_dec = max_words * (max_fill + 1) + max_fill, max_words + 1
    data = Split(
        src=torch.zeros(n, max_src, dtype=torch.long),
        src_ext=torch.zeros(n, max_src, dtype=torch.long),
        src_mask=torch.zeros(n, max_src, dtype=torch.bool),
        dec_in=torch.zeros(n, max_dec, dtype=torch.long),
        target=torch.zeros(n, max_dec, dtype=torch.long),
        dec_mask=torch.zeros(n, max_dec),
        n_oov=torch.zeros(n, dtype=torch.long),
    )

    def fillers() -> list[int]:
        return [int(f) for f in rng.choice(FILLERS, int(rng.integers(0, max_fill + 1)))]

    def unk(ids: list[int]) -> list[int]:
        return [UNK if w >= VOCAB_SIZE else w for w in ids]

    for i in range(n):
        count = int(rng.integers(min_words, max_words + 1))
        n_oov = int((rng.random(count) < p_oov).sum())
        words = [int(w) for w in rng.choice(CONTENT, count - n_oov, replace=False)]
        words += [-1 - int(w) for w in rng.choice(OOV_WORDS, n_oov, replace=False)]  # raw OOVs: negative
        words = [words[j] for j in rng.permutation(count)]
        source = [token for word in words for token in fillers() + [word]] + fillers()
        oovs = [w for w in words if w < 0]  # in order of first appearance: extended ids V, V+1, ...
        extended = [VOCAB_SIZE + oovs.index(w) if w < 0 else w for w in source]
        summary = [w for w in extended if w not in FILLERS]
        data.src_ext[i, : len(source)] = torch.tensor(extended)
        data.src[i, : len(source)] = torch.tensor(unk(extended))
        data.src_mask[i, : len(source)] = True
        data.dec_in[i, : count + 1] = torch.tensor([START] + unk(summary))
        data.target[i, : count + 1] = torch.tensor(summary + [STOP])
        data.dec_mask[i, : count + 1] = 1.0
        data.n_oov[i] = len(oovs)
    return data


def render(ids: list[int]) -> str:
    """Readable tokens: ``w12`` a content word, ``f5`` a filler, ``OOV0`` extended id ``V+0``."""
    names = {PAD: "<pad>", UNK: "<unk>", START: "<start>", STOP: "<stop>"}
    return " ".join(
        names.get(i) or (f"OOV{i - VOCAB_SIZE}" if i >= VOCAB_SIZE else f"{'f' if i in FILLERS else 'w'}{i}")
        for i in ids
    )


# ------------------------------------------------------------------ model
class Memory(NamedTuple):
    """What every decoder step reads: encoder states and the source in extended ids."""

    states: torch.Tensor  # [B, L, 2H] encoder states h_i
    features: torch.Tensor  # [B, L, 2H] W_h h_i, computed once
    src_ext: torch.Tensor  # [B, L]
    src_mask: torch.Tensor  # [B, L]
    n_ext: int  # V + the batch's largest OOV count


class DecoderState(NamedTuple):
    """What one decoder step passes to the next."""

    h: torch.Tensor  # [B, H]
    c: torch.Tensor  # [B, H]
    context: torch.Tensor  # [B, 2H] previous context vector h*_{t-1} (input feeding)
    coverage: torch.Tensor  # [B, L] sum of earlier attention distributions


class PointerGenerator(nn.Module):
    """Bi-LSTM encoder, Bahdanau attention decoder with optional coverage, copying via ``p_gen``.

    Args:
        vocab_size: Size ``V`` of the fixed vocabulary (id 0 is padding).
        emb_dim: Word embedding size.
        hidden: LSTM hidden size ``H`` (the encoder has ``H`` per direction).
        coverage: Feed the coverage vector into attention (See et al.'s ``w_c c_t`` term).
            It can be switched on later by setting ``model.coverage = True``; ``w_c`` starts
            at zero, so switching on leaves the model's outputs unchanged at first.

    Raises:
        ValueError: ``vocab_size < 4``, ``emb_dim < 1`` or ``hidden < 1``.
    """

    def __init__(
        self, vocab_size: int = VOCAB_SIZE, emb_dim: int = 32, hidden: int = 64, coverage: bool = False
    ) -> None:
        super().__init__()
        if vocab_size < 4 or emb_dim < 1 or hidden < 1:
            raise ValueError(f"need vocab_size >= 4, emb_dim >= 1, hidden >= 1; got {vocab_size}, {emb_dim}, {hidden}")
        self.vocab_size, self.coverage = vocab_size, coverage
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.encoder = nn.LSTM(emb_dim, hidden, batch_first=True, bidirectional=True)
        self.reduce_h = nn.Linear(2 * hidden, hidden)  # final encoder states -> decoder's initial state
        self.reduce_c = nn.Linear(2 * hidden, hidden)
        self.w_h = nn.Linear(2 * hidden, 2 * hidden, bias=False)  # attention: v^T tanh(W_h h_i + W_s s_t
        self.w_s = nn.Linear(2 * hidden, 2 * hidden)  # + w_c c_t^i + b_attn), s_t = [c_t; h_t]
        self.w_c = nn.Parameter(torch.zeros(2 * hidden))
        self.v = nn.Linear(2 * hidden, 1, bias=False)
        self.input_proj = nn.Linear(emb_dim + 2 * hidden, emb_dim)  # x_t from [emb(y_{t-1}); h*_{t-1}]
        self.cell = nn.LSTMCell(emb_dim, hidden)
        self.p_gen_proj = nn.Linear(2 * hidden + 2 * hidden + emb_dim, 1)  # p_gen from [h*_t; s_t; x_t]
        self.out1 = nn.Linear(3 * hidden, hidden)  # P_vocab from [h_t; h*_t]
        self.out2 = nn.Linear(hidden, vocab_size)

    def encode(self, batch: Split) -> tuple[Memory, DecoderState]:
        """Run the encoder; return the memory and the decoder's initial state."""
        lengths = batch.src_mask.sum(1).clamp(min=1).cpu()
        embedded = self.embedding(batch.src)
        packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=batch.src.shape[1])
        memory = Memory(states, self.w_h(states), batch.src_ext, batch.src_mask, batch.n_ext)
        start = DecoderState(
            h=F.relu(self.reduce_h(torch.cat([h[0], h[1]], dim=-1))),
            c=F.relu(self.reduce_c(torch.cat([c[0], c[1]], dim=-1))),
            context=states.new_zeros(states.shape[0], states.shape[2]),
            coverage=states.new_zeros(states.shape[:2]),
        )
        return memory, start

    def step(
        self, y_prev: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DecoderState]:
        """One decoder step: ``(final [B, n_ext], attention [B, L], p_gen [B], next state)``."""
        x = self.input_proj(torch.cat([self.embedding(y_prev), state.context], dim=-1))
        h, c = self.cell(x, (state.h, state.c))
        s = torch.cat([c, h], dim=-1)
        features = memory.features + self.w_s(s).unsqueeze(1)
        if self.coverage:
            features = features + state.coverage.unsqueeze(-1) * self.w_c
        scores = self.v(torch.tanh(features)).squeeze(-1).masked_fill(~memory.src_mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        context = torch.bmm(attn.unsqueeze(1), memory.states).squeeze(1)
        p_gen = torch.sigmoid(self.p_gen_proj(torch.cat([context, s, x], dim=-1))).squeeze(-1)
        p_vocab = torch.softmax(self.out2(self.out1(torch.cat([h, context], dim=-1))), dim=-1)
        # final = p_gen * P_vocab (zero on the OOV ids) + (1 - p_gen) * attention summed per source id
        final = F.pad(p_gen.unsqueeze(-1) * p_vocab, (0, memory.n_ext - self.vocab_size))
        final = final.scatter_add(1, memory.src_ext, (1 - p_gen).unsqueeze(-1) * attn)
        return final, attn, p_gen, DecoderState(h, c, context, state.coverage + attn)

    def final_distributions(self, batch: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``(final [B, T, V_ext], attention [B, T, L], p_gen [B, T])``."""
        memory, state = self.encode(batch)
        finals, attns, p_gens = [], [], []
        for t in range(batch.dec_in.shape[1]):
            final, attn, p_gen, state = self.step(batch.dec_in[:, t], state, memory)
            finals.append(final)
            attns.append(attn)
            p_gens.append(p_gen)
        return torch.stack(finals, 1), torch.stack(attns, 1), torch.stack(p_gens, 1)

    def forward(self, batch: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``(log final distribution [B, T, V_ext], attention [B, T, L])``.

        Probabilities are clamped at 1e-12 before the log (an OOV id of another example in
        the batch has probability exactly 0).
        """
        final, attn, _ = self.final_distributions(batch)
        return torch.log(final.clamp(min=1e-12)), attn

    @torch.no_grad()
    def greedy_decode(self, batch: Split, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding: ``(tokens [B, max_steps] in extended ids, attention [B, max_steps, L])``."""
        memory, state = self.encode(batch)
        y = torch.full((len(batch),), START, dtype=torch.long, device=batch.src.device)
        tokens, attns = [], []
        for _ in range(max_steps):
            final, attn, _, state = self.step(y, state, memory)
            tokens.append(final.argmax(-1))
            attns.append(attn)
            y = tokens[-1].masked_fill(tokens[-1] >= self.vocab_size, UNK)  # an OOV goes back in as UNK
        return torch.stack(tokens, 1), torch.stack(attns, 1)


# ------------------------------------------------------------------ training (the original recipe)
@dataclass
class Setup:
    """What every arm trains and evaluates on."""

    train_data: Split
    val_batches: list[Split]
    order: torch.Tensor  # [steps, batch_size] example indices of each training step
    recipe: recipes.Recipe
    eval_every: int
    device: torch.device
    config: dict[str, Any]  # the command line, saved into checkpoints


@dataclass
class Arm:
    """One training run: model, optimizer, AMP step, best-model rule and checkpoints."""

    name: str
    model: PointerGenerator
    optimizer: torch.optim.Optimizer
    amp: AMPStep
    averager: RunningAverage
    manager: CheckpointManager
    step: int = 0
    coverage_steps: int = 0
    best_step: int = 0
    seconds: float = 0.0


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """``[steps, batch_size]`` example indices: epochs of seeded permutations, last partial batch dropped.

    Raises:
        ValueError: ``batch_size`` outside ``[1, n]`` or ``steps < 0``.
    """
    if not 1 <= batch_size <= n or steps < 0:
        raise ValueError(f"need 1 <= batch_size <= n and steps >= 0; got n={n}, batch_size={batch_size}, steps={steps}")
    g = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    epochs = [torch.randperm(n, generator=g)[: per_epoch * batch_size] for _ in range(-(-steps // per_epoch))]
    return torch.cat(epochs or [torch.zeros(0, dtype=torch.long)]).view(-1, batch_size)[:steps]


def new_arm(name: str, model: PointerGenerator, out: Path, recipe: recipes.Recipe, every_seconds: float) -> Arm:
    """The original recipe's optimizer, AMP step, running average and checkpoints for ``model``."""
    optimizer = build_optimizer(model, recipe.optimizer, **recipe.optimizer_kwargs())
    return Arm(
        name=name,
        model=model,
        optimizer=optimizer,
        amp=AMPStep(optimizer, precision=recipe.precision, max_grad_norm=recipe.max_grad_norm),
        averager=RunningAverage(recipe.running_avg_decay, recipe.running_avg_clip),
        manager=CheckpointManager(
            out / name, keep_last=recipe.keep_last, every_seconds=every_seconds, pinned=(recipe.best_name,)
        ),
    )


def fork(arm: Arm, name: str, out: Path, recipe: recipes.Recipe, every_seconds: float) -> Arm:
    """A copy of ``arm`` (model and optimizer state) in its own directory.

    The running average starts afresh, as See et al.'s eval process of the coverage run did.
    """
    new = new_arm(name, copy.deepcopy(arm.model), out, recipe, every_seconds)
    new.optimizer.load_state_dict(copy.deepcopy(arm.optimizer.state_dict()))
    new.step, new.seconds = arm.step, arm.seconds
    return new


def checkpoint_state(arm: Arm, setup: Setup) -> dict[str, Any]:
    """A checkpoint: tensors and plain values only, so ``weights_only`` loading accepts it."""
    return {
        "model": arm.model.state_dict(),
        "coverage": arm.model.coverage,
        "optimizer": arm.optimizer.state_dict(),
        "amp": arm.amp.state_dict(),
        "running_avg": arm.averager.state_dict(),
        "step": arm.step,
        "coverage_steps": arm.coverage_steps,
        "config": setup.config,
    }


def train(arm: Arm, setup: Setup, steps: int) -> None:
    """Run ``steps`` training steps from ``arm.step`` the way the original pipeline did.

    Loss: ``masked_nll`` plus ``cov_loss_wt * coverage_loss`` when the model uses coverage.
    Every ``eval_every`` steps, one validation batch's NLL updates the running average and a
    new best is saved as ``bestmodel.pt`` (the eval process). A rotating checkpoint is
    written whenever ``every_seconds`` have passed, and at the end.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite ("Loss is not finite. Stopping.");
            no update is made with it.
    """
    recipe, model = setup.recipe, arm.model
    started = time.perf_counter()
    for _ in range(steps):
        model.train()
        batch = setup.train_data.take(setup.order[arm.step], setup.device)
        with arm.amp.autocast():
            log_final, attn = model(batch)
            loss = masked_nll(log_final, batch.target, batch.dec_mask)
            if model.coverage:
                loss = loss + recipe.cov_loss_wt * coverage_loss(attn, batch.dec_mask)
        if not torch.isfinite(loss):
            raise NonFiniteLossError("Loss is not finite. Stopping.")
        arm.amp.step(loss)
        arm.step += 1
        arm.coverage_steps += int(model.coverage)
        if arm.step % setup.eval_every == 0:
            val = setup.val_batches[(arm.step // setup.eval_every) % len(setup.val_batches)]
            model.eval()
            with torch.no_grad():
                val_log_final, _ = model(val)
                arm.averager.update(masked_nll(val_log_final, val.target, val.dec_mask))
            if arm.averager.is_best:
                arm.best_step = arm.step
                arm.manager.save(recipe.best_name, checkpoint_state(arm, setup))
        if arm.manager.due():
            arm.manager.save(f"ckpt-{arm.step:06d}.pt", checkpoint_state(arm, setup))
    arm.seconds += time.perf_counter() - started
    arm.manager.save(f"ckpt-{arm.step:06d}.pt", checkpoint_state(arm, setup))


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: PointerGenerator, batches: list[Split]) -> dict[str, float]:
    """Validation figures of one model.

    - ``val_nll``: teacher-forced ``masked_nll``.
    - ``val_coverage_loss``: ``coverage_loss`` of the teacher-forced attention, the mean per
      step of ``sum_l min(a_t, c_t)``: how much attention goes where it already went.
    - Greedy decoding (until ``<stop>``): ``token_accuracy`` (per summary token, ``<stop>``
      included), ``exact_match``, ``oov_accuracy`` (OOV summary tokens produced in place),
      ``repeated_attention`` (fraction of decoded word steps whose attention argmax is an
      earlier step's), ``repeated_words`` (decoded words produced earlier in the sequence;
      a summary never repeats a word) and ``missing_words`` (summary words never produced).
    """
    model.eval()
    keys = ("nll", "cov", "seqs", "hits", "tokens", "exact", "oov_hits", "oovs", "rep_attn", "rep_words", "steps",
            "missing", "words")
    total = dict.fromkeys(keys, 0.0)
    for batch in batches:
        size = len(batch)
        log_final, attn = model(batch)
        total["nll"] += float(masked_nll(log_final, batch.target, batch.dec_mask)) * size
        total["cov"] += float(coverage_loss(attn, batch.dec_mask)) * size
        total["seqs"] += size
        tokens, dec_attn = model.greedy_decode(batch, max_steps=batch.target.shape[1] + 2)
        valid = batch.dec_mask.bool()
        hits = (tokens[:, : batch.target.shape[1]] == batch.target) & valid
        is_oov = valid & (batch.target >= VOCAB_SIZE)
        total["hits"] += float(hits.sum())
        total["tokens"] += float(valid.sum())
        total["exact"] += float((hits.sum(1) == valid.sum(1)).sum())
        total["oov_hits"] += float((hits & is_oov).sum())
        total["oovs"] += float(is_oov.sum())
        for b, (words, places) in enumerate(zip(tokens.tolist(), dec_attn.argmax(-1).tolist())):
            seen_words: set[int] = set()
            seen_places: set[int] = set()
            for word, place in zip(words, places):
                if word == STOP:
                    break
                total["steps"] += 1
                total["rep_words"] += word in seen_words
                total["rep_attn"] += place in seen_places
                seen_words.add(word)
                seen_places.add(place)
            summary = set(batch.target[b][valid[b]].tolist()) - {STOP}
            total["missing"] += len(summary - seen_words)
            total["words"] += len(summary)
    steps = max(total["steps"], 1.0)
    return {
        "val_nll": total["nll"] / total["seqs"],
        "val_coverage_loss": total["cov"] / total["seqs"],
        "token_accuracy": total["hits"] / total["tokens"],
        "exact_match": total["exact"] / total["seqs"],
        "oov_accuracy": total["oov_hits"] / max(total["oovs"], 1.0),
        "repeated_attention": total["rep_attn"] / steps,
        "repeated_words": total["rep_words"] / steps,
        "missing_words": total["missing"] / total["words"],
        "decoded_steps": int(total["steps"]),
    }


def best_model(arm: Arm, recipe: recipes.Recipe, device: torch.device) -> PointerGenerator:
    """The arm's ``bestmodel.pt`` (loaded safely), or its current model when none was saved."""
    model = copy.deepcopy(arm.model)
    if (arm.manager.directory / recipe.best_name).is_file():
        model.load_state_dict(arm.manager.load(recipe.best_name, map_location=device)["model"])
    return model


# ------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (a bad value exits with status 2 and a one-line message)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--coverage", choices=("on", "off", "both"), default="both", help="which arm(s) to train (default: both)")
    add("--steps", type=int, default=600, help="training steps of each arm (default: 600)")
    add("--coverage-steps", type=int, default=150, help="the last N steps train with coverage (default: 150)")
    add("--cov-loss-wt", type=float, help="coverage loss weight (default: the recipe's 1.0)")
    add("--batch-size", type=int, default=32, help="default: 32")
    add("--train-size", type=int, default=4000, help="training examples (default: 4000)")
    add("--val-size", type=int, default=500, help="validation examples (default: 500)")
    add("--eval-every", type=int, default=10, help="steps between running-average updates (default: 10)")
    add("--checkpoint-every", type=float, help="seconds between checkpoints (default: the recipe's 60)")
    add("--seed", type=int, default=42, help="model init and batch order (default: 42)")
    add("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default: cpu")
    add("--threads", type=int, default=1, help="CPU threads; 1 is fastest for this tiny model (default: 1)")
    add("--out", type=Path, default=Path("runs/pointer_generator"), help="default: runs/pointer_generator")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "train_size", "val_size", "eval_every", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.coverage != "off" and not 1 <= args.coverage_steps <= args.steps:
        parser.error(f"--coverage-steps must be in [1, --steps] = [1, {args.steps}], got {args.coverage_steps}")
    if args.train_size < args.batch_size:
        parser.error(f"--train-size ({args.train_size}) must be >= --batch-size ({args.batch_size})")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.cov_loss_wt is not None and not 0 <= args.cov_loss_wt < float("inf"):
        parser.error(f"--cov-loss-wt must be a finite number >= 0, got {args.cov_loss_wt}")
    if args.checkpoint_every is not None and not 0 < args.checkpoint_every < float("inf"):
        parser.error(f"--checkpoint-every must be a finite number > 0, got {args.checkpoint_every}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> int:
    """Train the requested arm(s), print the table and write ``OUT/coverage_report.json``."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (the tests)


def run(args: argparse.Namespace) -> int:
    """:func:`main` after parsing: returns the exit status."""
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    recipe = recipes.original()
    if args.cov_loss_wt is not None:
        recipe = recipe.replace(cov_loss_wt=args.cov_loss_wt)
    every = recipe.checkpoint_every_seconds if args.checkpoint_every is None else args.checkpoint_every
    train_data = make_split(args.train_size, DATA_SEED)
    val_data = make_split(args.val_size, DATA_SEED + 1)
    setup = Setup(
        train_data=train_data,
        val_batches=[val_data.take(index, device) for index in torch.arange(len(val_data)).split(100)],
        order=batch_order(len(train_data), args.batch_size, args.steps, args.seed),
        recipe=recipe,
        eval_every=args.eval_every,
        device=device,
        config={key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    )
    seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    # The first steps - coverage_steps steps are shared, without coverage; then the arms part (See et al.).
    shared = args.steps - (args.coverage_steps if args.coverage != "off" else 0)
    baseline = new_arm("no_coverage", PointerGenerator().to(device), args.out, recipe, every)
    arms: dict[str, Arm] = {}
    try:
        train(baseline, setup, shared)
        if args.coverage in ("off", "both"):
            arms["no_coverage"] = baseline
        if args.coverage in ("on", "both"):
            arms["coverage"] = fork(baseline, "coverage", args.out, recipe, every)
            arms["coverage"].model.coverage = True
            train(arms["coverage"], setup, args.coverage_steps)
        if "no_coverage" in arms:
            train(baseline, setup, args.steps - shared)
    except NonFiniteLossError as exc:
        print(exc, file=sys.stderr)
        return 1

    report: dict[str, Any] = {"config": setup.config, "recipe": recipe.name, "device": str(device), "runs": {}}
    models = {name: best_model(arm, recipe, device) for name, arm in arms.items()}
    for name, arm in arms.items():
        report["runs"][name] = {
            "steps": arm.step,
            "coverage_steps": arm.coverage_steps,
            "best_step": arm.best_step,
            "train_seconds": round(arm.seconds, 2),
            **evaluate(models[name], setup.val_batches),
        }
    path = args.out / "coverage_report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report["runs"])
    print_example(models, setup.val_batches[0])
    print(f"report: {path}")
    return 0


def print_table(runs: dict[str, dict[str, Any]]) -> None:
    """One row per arm: its best model's validation figures."""
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
    for name, figures in runs.items():
        cells = " ".join(f"{figures[key]:>9.4f}" for key in columns)
        print(f"{name:<12} {figures['steps']:>5} {figures['coverage_steps']:>9} {cells}")


def print_example(models: dict[str, PointerGenerator], batch: Split) -> None:
    """The first validation example and each arm's greedy summary of it."""
    example = batch.take(torch.tensor([0]), batch.src.device)
    print(f"{'source':<12} {render(example.src_ext[0].tolist())}")
    print(f"{'summary':<12} {render(example.target[0].tolist())}")
    for name, model in models.items():
        tokens = model.greedy_decode(example, max_steps=example.target.shape[1] + 2)[0][0].tolist()
        print(f"{name:<12} {render(tokens[: tokens.index(STOP) + 1] if STOP in tokens else tokens)}")


if __name__ == "__main__":
    sys.exit(main())
