"""A small pointer-generator (See et al. 2017) trained with the original recipe's components.

    python examples/pointer_generator.py                       # both arms: table + report
    python examples/pointer_generator.py --coverage off --steps 300
    python examples/pointer_generator.py --coverage on --out runs/pg --seed 1

The task ("copy and summarise") is synthetic and deterministic. A source is a sequence of
distinct content words with filler words around them; some content words are outside the
vocabulary (OOV) and get per-example extended ids ``V, V+1, ...`` as in See et al. The
summary is the source's content words in order, fillers dropped, then ``<stop>``: the model
must copy (OOVs can only be copied) and should attend to each word once.

Training goes through ``trainkit.Trainer`` with ``trainkit.recipes.original()``: Adagrad
(lr 0.15, initial accumulator 0.1) at a fixed LR, fp32, global-norm clip 2.0, loss
``masked_nll`` (+ 1.0 x ``coverage_loss`` with coverage on), "Loss is not finite.
Stopping.", a running average (decay 0.99, clip 12) of the validation NLL that selects
``bestmodel.pt``, and time-based checkpoints (every 60 s, keep 3). A Trainer "epoch" is the
``--eval-every`` steps up to the next one-batch evaluation (docs/pointer_generator.md).

``--coverage both`` (the default) does what See et al. did: train without coverage, then
turn coverage on for the last ``--coverage-steps`` steps. The baseline arm continues from
the same state (the shared run's ``last.pt``) for the same steps on the same batches
without coverage, so the two arms differ only by coverage. Both arms' best models are
evaluated on the validation set; the figures are printed and written to
``OUT/coverage_report.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainkit import (
    AMPStep,
    CheckpointManager,
    RunningAverage,
    Trainer,
    build_optimizer,
    coverage_loss,
    load_checkpoint,
    masked_nll,
    recipes,
)
from trainkit.nonfinite import NonFiniteLossError
from trainkit.rng import seed_everything

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
        src_len, dec_len = (
            int(self.src_mask[index].sum(1).max()),
            int(self.dec_mask[index].sum(1).max()),
        )
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
    if (
        n < 1
        or not 1 <= min_words <= max_words <= len(CONTENT)
        or max_fill < 0
        or not 0.0 <= p_oov <= 1.0
    ):
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
        words += [
            -1 - int(w) for w in rng.choice(OOV_WORDS, n_oov, replace=False)
        ]  # raw OOVs: negative
        words = [words[j] for j in rng.permutation(count)]
        source = [token for word in words for token in [*fillers(), word]] + fillers()
        oovs = [w for w in words if w < 0]  # in order of first appearance: extended ids V, V+1, ...
        extended = [VOCAB_SIZE + oovs.index(w) if w < 0 else w for w in source]
        summary = [w for w in extended if w not in FILLERS]
        data.src_ext[i, : len(source)] = torch.tensor(extended)
        data.src[i, : len(source)] = torch.tensor(unk(extended))
        data.src_mask[i, : len(source)] = True
        data.dec_in[i, : count + 1] = torch.tensor([START, *unk(summary)])
        data.target[i, : count + 1] = torch.tensor([*summary, STOP])
        data.dec_mask[i, : count + 1] = 1.0
        data.n_oov[i] = len(oovs)
    return data


def render(ids: list[int]) -> str:
    """Readable tokens: ``w12`` a content word, ``f5`` a filler, ``OOV0`` extended id ``V+0``."""
    names = {PAD: "<pad>", UNK: "<unk>", START: "<start>", STOP: "<stop>"}
    return " ".join(
        names.get(i)
        or (f"OOV{i - VOCAB_SIZE}" if i >= VOCAB_SIZE else f"{'f' if i in FILLERS else 'w'}{i}")
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
        self,
        vocab_size: int = VOCAB_SIZE,
        emb_dim: int = 32,
        hidden: int = 64,
        coverage: bool = False,
    ) -> None:
        super().__init__()
        if vocab_size < 4 or emb_dim < 1 or hidden < 1:
            raise ValueError(
                f"need vocab_size >= 4, emb_dim >= 1, hidden >= 1; got {vocab_size}, {emb_dim}, {hidden}"
            )
        self.vocab_size, self.coverage = vocab_size, coverage
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.encoder = nn.LSTM(emb_dim, hidden, batch_first=True, bidirectional=True)
        self.reduce_h = nn.Linear(
            2 * hidden, hidden
        )  # final encoder states -> decoder's initial state
        self.reduce_c = nn.Linear(2 * hidden, hidden)
        self.w_h = nn.Linear(
            2 * hidden, 2 * hidden, bias=False
        )  # attention: v^T tanh(W_h h_i + W_s s_t
        self.w_s = nn.Linear(2 * hidden, 2 * hidden)  # + w_c c_t^i + b_attn), s_t = [c_t; h_t]
        self.w_c = nn.Parameter(torch.zeros(2 * hidden))
        self.v = nn.Linear(2 * hidden, 1, bias=False)
        self.input_proj = nn.Linear(
            emb_dim + 2 * hidden, emb_dim
        )  # x_t from [emb(y_{t-1}); h*_{t-1}]
        self.cell = nn.LSTMCell(emb_dim, hidden)
        self.p_gen_proj = nn.Linear(
            2 * hidden + 2 * hidden + emb_dim, 1
        )  # p_gen from [h*_t; s_t; x_t]
        self.out1 = nn.Linear(3 * hidden, hidden)  # P_vocab from [h_t; h*_t]
        self.out2 = nn.Linear(hidden, vocab_size)

    def encode(self, batch: Split) -> tuple[Memory, DecoderState]:
        """Run the encoder; return the memory and the decoder's initial state."""
        lengths = batch.src_mask.sum(1).clamp(min=1).cpu()
        embedded = self.embedding(batch.src)
        packed = nn.utils.rnn.pack_padded_sequence(
            embedded, lengths, batch_first=True, enforce_sorted=False
        )
        out, (h, c) = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=batch.src.shape[1]
        )
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
        scores = (
            self.v(torch.tanh(features)).squeeze(-1).masked_fill(~memory.src_mask, float("-inf"))
        )
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
            y = tokens[-1].masked_fill(
                tokens[-1] >= self.vocab_size, UNK
            )  # an OOV goes back in as UNK
        return torch.stack(tokens, 1), torch.stack(attns, 1)


# ------------------------------------------------------------------ training through the Trainer (the original recipe)
# The original pipeline counts steps, not epochs: its eval process read ONE validation batch
# every so often and fed its NLL to the running average. Here a Trainer "epoch" is the run of
# steps up to the next such evaluation (every --eval-every steps), so the Trainer's
# validation pass is that one batch and RunningAverage gets its loss, as the original did.
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
    out: Path  # each arm writes OUT/<arm>/
    checkpoint_every: float | None  # seconds between time-based checkpoints (None: none)
    ends: list[int]  # the global step at which each Trainer epoch ends (epoch_ends)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """``[steps, batch_size]`` example indices: epochs of seeded permutations, last partial batch dropped.

    Raises:
        ValueError: ``batch_size`` outside ``[1, n]`` or ``steps < 0``.
    """
    if not 1 <= batch_size <= n or steps < 0:
        raise ValueError(
            f"need 1 <= batch_size <= n and steps >= 0; got n={n}, batch_size={batch_size}, steps={steps}"
        )
    g = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    epochs = [
        torch.randperm(n, generator=g)[: per_epoch * batch_size]
        for _ in range(-(-steps // per_epoch))
    ]
    return torch.cat(epochs or [torch.zeros(0, dtype=torch.long)]).view(-1, batch_size)[:steps]


def epoch_ends(steps: int, eval_every: int, switch: int) -> list[int]:
    """The global step at which each Trainer epoch ends: every multiple of ``eval_every``, the
    step where the arms part (``switch``, when inside the run) and the last step.

    Raises:
        ValueError: ``steps < 1`` or ``eval_every < 1``.
    """
    if steps < 1 or eval_every < 1:
        raise ValueError(
            f"need steps >= 1 and eval_every >= 1; got steps={steps}, eval_every={eval_every}"
        )
    return sorted(
        {*range(eval_every, steps + 1, eval_every), steps}
        | ({switch} if 0 < switch < steps else set())
    )


class StepBatches:
    """The training loader: epoch ``e`` yields the batches of steps ``ends[e-1] .. ends[e]-1``.

    The Trainer calls ``set_epoch`` with its epoch counter before each epoch (after a
    resume too), so the batch of every global step is fixed by ``order`` whatever the arm.
    """

    def __init__(self, setup: Setup) -> None:
        self.setup, self.ends, self.epoch = setup, setup.ends, 0

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch`` (0-based)."""
        self.epoch = epoch

    def steps(self) -> range:
        """The global steps of the selected epoch."""
        return range(self.ends[self.epoch - 1] if self.epoch else 0, self.ends[self.epoch])

    def __len__(self) -> int:
        return len(self.steps())

    def __iter__(self) -> Iterator[Split]:
        for step in self.steps():
            yield self.setup.train_data.take(self.setup.order[step], self.setup.device)


class EvalBatch:
    """The validation loader: the one batch the original's eval process read at the end of the
    selected epoch, batch ``(step // eval_every) % len(val_batches)``; none when the epoch ends
    between two evaluations (at the coverage switch)."""

    def __init__(self, train: StepBatches) -> None:
        self.train = train

    def __iter__(self) -> Iterator[Split]:
        step, setup = self.train.steps().stop, self.train.setup
        if step % setup.eval_every == 0:
            yield setup.val_batches[(step // setup.eval_every) % len(setup.val_batches)]


class Outputs(NamedTuple):
    """What the Trainer's ``forward`` returns as scores: the model's two outputs."""

    log_final: torch.Tensor  # [B, T, V_ext] log final distribution
    attention: torch.Tensor  # [B, T, L]


def forward(model: nn.Module, batch: Split, device: torch.device) -> tuple[Outputs, torch.Tensor]:
    """The Trainer's batch adapter: ``(Outputs(log final distribution, attention), target)``.

    The loaders put batches on the device already (``Split.take``). ``target`` is ``PAD``
    exactly at the padded decoder steps, so ``target != PAD`` is the decoder mask (and the
    Trainer's ``ignore_index=PAD`` counts the valid steps).
    """
    log_final, attention = model(batch)
    return Outputs(log_final, attention), batch.target


class SummaryLoss:
    """``masked_nll``, plus ``cov_loss_wt * coverage_loss`` while the model trains with coverage.

    In eval mode it is the NLL alone: See et al.'s eval process fed the running average the
    NLL (it only printed the coverage loss, which :class:`TeacherForcedMetrics` records).
    """

    def __init__(self, model: PointerGenerator, cov_loss_wt: float) -> None:
        self.model, self.cov_loss_wt = model, cov_loss_wt

    def __call__(self, outputs: Outputs, target: torch.Tensor) -> torch.Tensor:
        mask = (target != PAD).float()
        loss = masked_nll(outputs.log_final, target, mask)
        if self.model.training and self.model.coverage:
            loss = loss + self.cov_loss_wt * coverage_loss(outputs.attention, mask)
        return loss


class TeacherForcedMetrics:
    """The Trainer's validation metrics: ``coverage_loss`` and ``next_token_accuracy`` (argmax
    of the teacher-forced final distribution) per validation pass; ``val_coverage_loss`` and
    ``val_next_token_accuracy`` in each epoch record.

    Args:
        device: Where the sums live.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.totals = torch.zeros(
            4, dtype=torch.float64, device=device
        )  # [coverage loss x seqs, seqs, hits, tokens]

    @torch.no_grad()
    def update(self, outputs: Outputs, target: torch.Tensor, valid: torch.Tensor) -> None:
        """Add one batch (``valid``: ``[B, T]`` True at real decoder steps)."""
        size = target.new_tensor(target.shape[0], dtype=torch.float64)
        hits = ((outputs.log_final.argmax(-1) == target) & valid).sum().double()
        cov = coverage_loss(outputs.attention, valid.float()).double() * size
        self.totals += torch.stack([cov, size, hits, valid.sum().double()])

    def sums(self) -> torch.Tensor:
        """A copy of the additive counters."""
        return self.totals.clone()

    def compute(self) -> dict[str, float]:
        """The metrics of everything added (NaN before any batch)."""
        return self.compute_from_sums(self.totals)

    @staticmethod
    def compute_from_sums(sums: torch.Tensor) -> dict[str, float]:
        """The metrics from (possibly all-reduced) :meth:`sums`."""
        cov, seqs, hits, tokens = sums.tolist()
        return {
            "coverage_loss": cov / seqs if seqs else math.nan,
            "next_token_accuracy": hits / tokens if tokens else math.nan,
        }


def build_trainer(setup: Setup, name: str, epochs: int, coverage: bool) -> Trainer:
    """A Trainer with the original recipe's components for one arm, writing ``OUT/<name>/``.

    Adagrad at a fixed LR, fp32 with global-norm clipping, "Loss is not finite. Stopping."
    (checked every step: ``log_every=1``), a ``RunningAverage`` selecting ``bestmodel.pt``
    and time-based checkpoints (plus ``last.pt`` at each epoch end, from which arms fork).
    """
    recipe = setup.recipe
    model = PointerGenerator(coverage=coverage).to(setup.device)
    optimizer = build_optimizer(model, recipe.optimizer, **recipe.optimizer_kwargs())
    train_batches = StepBatches(setup)
    return Trainer(
        model,
        optimizer,
        SummaryLoss(model, recipe.cov_loss_wt or 0.0),
        train_batches,
        EvalBatch(train_batches),
        epochs=epochs,
        amp=AMPStep(optimizer, precision=recipe.precision, max_grad_norm=recipe.max_grad_norm),
        selector=RunningAverage(recipe.running_avg_decay, recipe.running_avg_clip),
        checkpoints=CheckpointManager(
            setup.out / name,
            keep_last=recipe.keep_last,
            every_seconds=setup.checkpoint_every,
            pinned=(recipe.best_name,),
        ),
        best_name=recipe.best_name,
        forward=forward,
        metrics=TeacherForcedMetrics,
        device=setup.device,
        ignore_index=PAD,
        nonfinite=recipe.nonfinite,
        log_every=1,
        progress=False,
        config={**setup.config, "model_coverage": coverage},
    )


@dataclass
class Arm:
    """One trained arm. After ``fit`` its Trainer's model holds the best weights."""

    trainer: Trainer
    first_epoch: int  # epochs inherited from the shared run with another selector (coverage arm)
    coverage_steps: int
    seconds: float  # training time, the shared steps included

    @property
    def model(self) -> PointerGenerator:
        """The arm's model: after ``fit``, its best weights (or its final ones when it made no new best)."""
        return cast(PointerGenerator, self.trainer.model)

    def best_step(self) -> int:
        """The step of this arm's ``bestmodel.pt`` (0: it made no new best)."""
        history = self.trainer.progress.history[self.first_epoch :]
        return max((record["step"] for record in history if record["improved"]), default=0)


def train_arms(args: argparse.Namespace, setup: Setup, shared: int) -> dict[str, Arm]:
    """Train ``shared`` steps without coverage, then each requested arm to ``--steps``.

    Both arms continue from the shared run's ``last.pt``; the coverage arm with a fresh
    running average, as See et al.'s eval process of the coverage run started afresh.

    Raises:
        NonFiniteLossError: a non-finite training loss ("Loss is not finite. Stopping.").
    """
    shared_epochs = setup.ends.index(shared) + 1 if shared else 0
    switch = setup.out / "no_coverage" / "last.pt"
    seconds = 0.0
    if shared:  # the common start, in OUT/no_coverage
        seed_everything(args.seed)
        base = build_trainer(setup, "no_coverage", shared_epochs, coverage=False)
        seconds = base.fit()["train_seconds"]
        if args.coverage == "off":
            return {"no_coverage": Arm(base, 0, 0, seconds)}
    arms: dict[str, Arm] = {}
    for name in ("coverage",) if args.coverage == "on" else ("coverage", "no_coverage"):
        seed_everything(
            args.seed
        )  # without shared steps both arms start from the same initial model
        trainer = build_trainer(setup, name, len(setup.ends), coverage=name == "coverage")
        if shared:
            state = load_checkpoint(switch, map_location=setup.device)
            if name == "coverage":
                state["selector"] = trainer.selector.state_dict()  # a fresh running average
            trainer.load_state_dict(state)
        fork_epoch, cov_steps = (
            (shared_epochs, args.steps - shared) if name == "coverage" else (0, 0)
        )
        arms[name] = Arm(trainer, fork_epoch, cov_steps, seconds + trainer.fit()["train_seconds"])
    return {name: arms[name] for name in ("no_coverage", "coverage") if name in arms}


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
    keys = (
        "nll",
        "cov",
        "seqs",
        "hits",
        "tokens",
        "exact",
        "oov_hits",
        "oovs",
        "rep_attn",
        "rep_words",
        "steps",
        "missing",
        "words",
    )
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


# ------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (a bad value exits with status 2 and a one-line message)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--coverage",
        choices=("on", "off", "both"),
        default="both",
        help="which arm(s) to train (default: both)",
    )
    add("--steps", type=int, default=600, help="training steps of each arm (default: 600)")
    add(
        "--coverage-steps",
        type=int,
        default=150,
        help="the last N steps train with coverage (default: 150)",
    )
    add("--cov-loss-wt", type=float, help="coverage loss weight (default: the recipe's 1.0)")
    add("--batch-size", type=int, default=32, help="default: 32")
    add("--train-size", type=int, default=4000, help="training examples (default: 4000)")
    add("--val-size", type=int, default=500, help="validation examples (default: 500)")
    add(
        "--eval-every",
        type=int,
        default=10,
        help="steps between running-average updates (default: 10)",
    )
    add(
        "--checkpoint-every",
        type=float,
        help="seconds between checkpoints (default: the recipe's 60)",
    )
    add("--seed", type=int, default=42, help="model init and batch order (default: 42)")
    add("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default: cpu")
    add(
        "--threads",
        type=int,
        default=1,
        help="CPU threads; 1 is fastest for this tiny model (default: 1)",
    )
    add(
        "--out",
        type=Path,
        default=Path("runs/pointer_generator"),
        help="default: runs/pointer_generator",
    )
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "train_size", "val_size", "eval_every", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.coverage != "off" and not 1 <= args.coverage_steps <= args.steps:
        parser.error(
            f"--coverage-steps must be in [1, --steps] = [1, {args.steps}], got {args.coverage_steps}"
        )
    if args.train_size < args.batch_size:
        parser.error(
            f"--train-size ({args.train_size}) must be >= --batch-size ({args.batch_size})"
        )
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
    train_data = make_split(args.train_size, DATA_SEED)
    val_data = make_split(args.val_size, DATA_SEED + 1)
    # The first steps - coverage_steps steps are shared, without coverage; then the arms part (See et al.).
    shared = args.steps - (args.coverage_steps if args.coverage != "off" else 0)
    setup = Setup(
        train_data=train_data,
        val_batches=[
            val_data.take(index, device) for index in torch.arange(len(val_data)).split(100)
        ],
        order=batch_order(len(train_data), args.batch_size, args.steps, args.seed),
        recipe=recipe,
        eval_every=args.eval_every,
        device=device,
        config={
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        out=args.out,
        checkpoint_every=recipe.checkpoint_every_seconds
        if args.checkpoint_every is None
        else args.checkpoint_every,
        ends=epoch_ends(args.steps, args.eval_every, shared),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        arms = train_arms(args, setup, shared)
    except NonFiniteLossError as exc:
        print(exc, file=sys.stderr)
        return 1

    report: dict[str, Any] = {
        "config": setup.config,
        "recipe": recipe.name,
        "device": str(device),
        "runs": {},
    }
    models = {
        name: arm.model for name, arm in arms.items()
    }  # the best weights (Trainer.fit loaded them)
    for name, arm in arms.items():
        report["runs"][name] = {
            "steps": arm.trainer.progress.global_step,
            "coverage_steps": arm.coverage_steps,
            "best_step": arm.best_step(),
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
    print(
        f"{'arm':<12} {'steps':>5} {'cov steps':>9} "
        + " ".join(f"{title:>9}" for title in columns.values())
    )
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
        print(
            f"{name:<12} {render(tokens[: tokens.index(STOP) + 1] if STOP in tokens else tokens)}"
        )


if __name__ == "__main__":
    sys.exit(main())
