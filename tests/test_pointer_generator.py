"""examples/pointer_generator.py: the extended-vocabulary distribution, coverage, training, the CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import pointer_generator as pg
from trainkit import (
    AMPStep,
    RunningAverage,
    build_optimizer,
    coverage_loss,
    load_checkpoint,
    masked_nll,
    recipes,
)
from trainkit.nonfinite import NonFiniteLossError

V = pg.VOCAB_SIZE
REPORT_KEYS = {
    "steps",
    "coverage_steps",
    "best_step",
    "train_seconds",
    "val_nll",
    "val_coverage_loss",
    "token_accuracy",
    "exact_match",
    "oov_accuracy",
    "repeated_attention",
    "repeated_words",
    "missing_words",
    "decoded_steps",
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The model is tiny: one thread is fastest, and fair to a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def oov_batch(n: int = 12, seed: int = 3) -> pg.Split:
    """A batch whose examples hold several OOVs, and different numbers of them."""
    batch = pg.make_split(n, seed, p_oov=0.5).take(torch.arange(n))
    assert int(batch.n_oov.max()) >= 2 and int(batch.n_oov.min()) < int(batch.n_oov.max())
    return batch


def small_model(coverage: bool = True, seed: int = 0) -> pg.PointerGenerator:
    torch.manual_seed(seed)
    model = pg.PointerGenerator(emb_dim=16, hidden=24, coverage=coverage)
    with torch.no_grad():
        model.w_c.normal_()  # w_c starts at zero; make the coverage term matter here
    return model


def test_the_task_is_deterministic_and_follows_the_summary_rule() -> None:
    a, b = pg.make_split(30, 7), pg.make_split(30, 7)
    for name in a.__dataclass_fields__:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert int(a.n_oov.sum()) > 0
    for i in range(30):
        source = a.src_ext[i][a.src_mask[i]].tolist()
        summary = a.target[i][a.dec_mask[i].bool()].tolist()
        assert summary == [w for w in source if w not in pg.FILLERS] + [pg.STOP]
        assert len(set(summary)) == len(summary)
        oovs = [w for w in dict.fromkeys(source) if w >= V]
        assert oovs == list(range(V, V + int(a.n_oov[i])))  # V, V+1, ... in order of appearance
        assert a.src[i][a.src_mask[i]].tolist() == [pg.UNK if w >= V else w for w in source]
        decoder_input = [pg.START] + [pg.UNK if w >= V else w for w in summary[:-1]]
        assert a.dec_in[i][a.dec_mask[i].bool()].tolist() == decoder_input


@pytest.mark.parametrize("coverage", [False, True])
def test_the_final_distribution_sums_to_one_over_the_extended_vocabulary(coverage: bool) -> None:
    batch = oov_batch()
    final, attn, p_gen = small_model(coverage).final_distributions(batch)
    assert final.shape == (len(batch), batch.dec_in.shape[1], batch.n_ext)
    assert (final >= 0).all()
    assert torch.allclose(final.sum(-1), torch.ones(final.shape[:2]), atol=1e-5)
    assert torch.allclose(attn.sum(-1), torch.ones(attn.shape[:2]), atol=1e-5)
    assert (attn * ~batch.src_mask.unsqueeze(1)).abs().max() == 0  # no attention on padding
    assert ((p_gen > 0) & (p_gen < 1)).all()


def test_probability_of_an_oov_comes_only_from_copying() -> None:
    batch = oov_batch()
    final, attn, p_gen = small_model().final_distributions(batch)
    assert final[..., V:].sum() > 0
    for k in range(int(batch.n_oov.max())):
        where_k = (batch.src_ext == V + k).float()  # [B, L]: where OOV k sits in each source
        copied = (1 - p_gen) * torch.einsum("btl,bl->bt", attn, where_k)
        assert torch.allclose(final[..., V + k], copied, atol=1e-6)
        assert (
            final[batch.n_oov <= k][..., V + k] == 0
        ).all()  # no OOV k in that source: exactly 0


def test_forward_returns_the_log_final_distribution_and_the_attention() -> None:
    batch = oov_batch()
    model = small_model()
    log_final, attn = model(batch)
    final, attn_again, _ = model.final_distributions(batch)
    assert attn.shape == (len(batch), batch.dec_in.shape[1], batch.src.shape[1])
    assert torch.allclose(log_final.exp(), final.clamp(min=1e-12), atol=1e-6)
    assert torch.equal(attn, attn_again)


def test_coverage_switches_on_smoothly_and_changes_attention_once_learned() -> None:
    batch = oov_batch()
    model = pg.PointerGenerator(emb_dim=16, hidden=24)
    _, before = model(batch)
    model.coverage = True
    _, after = model(batch)
    assert torch.equal(before, after)  # w_c = 0: turning coverage on changes nothing yet
    with torch.no_grad():
        model.w_c.normal_()
    _, learned = model(batch)
    assert torch.equal(learned[:, 0], before[:, 0]) and not torch.allclose(
        learned[:, 1:], before[:, 1:]
    )


def test_coverage_loss_of_the_models_attention_is_zero_at_the_first_step() -> None:
    batch = oov_batch()
    _, attn = small_model()(batch)
    first = torch.zeros_like(batch.dec_mask)
    first[:, 0] = 1.0
    assert coverage_loss(attn, first).item() == 0.0
    assert coverage_loss(attn, batch.dec_mask).item() > 0.0  # later steps overlap earlier ones


def test_a_few_original_recipe_steps_reduce_the_loss() -> None:
    batch = oov_batch(16)
    model = small_model()
    recipe = recipes.original()
    optimizer = build_optimizer(model, recipe.optimizer, **recipe.optimizer_kwargs())
    amp = AMPStep(optimizer, precision=recipe.precision, max_grad_norm=recipe.max_grad_norm)

    def loss() -> torch.Tensor:
        log_final, attn = model(batch)
        return masked_nll(
            log_final, batch.target, batch.dec_mask
        ) + recipe.cov_loss_wt * coverage_loss(attn, batch.dec_mask)

    before = loss()
    amp.step(before)
    for _ in range(3):
        amp.step(loss())
    assert loss().item() < before.item() - 0.1


def tiny_setup(tmp_path: Path, steps: int = 5, eval_every: int = 2, switch: int = 0) -> pg.Setup:
    """40 training examples, two validation batches of 8, batches of 8."""
    val = pg.make_split(16, 1)
    return pg.Setup(
        pg.make_split(40, 0),
        [val.take(torch.arange(8)), val.take(torch.arange(8, 16))],
        pg.batch_order(40, 8, steps, seed=0),
        recipes.original(),
        eval_every,
        torch.device("cpu"),
        {},
        tmp_path,
        60.0,
        pg.epoch_ends(steps, eval_every, switch),
    )


def test_epochs_end_at_each_evaluation_and_at_the_switch(tmp_path: Path) -> None:
    assert pg.epoch_ends(7, 2, 3) == [2, 3, 4, 6, 7]
    assert pg.epoch_ends(6, 2, 0) == pg.epoch_ends(6, 2, 6) == [2, 4, 6]
    setup = tiny_setup(tmp_path, steps=7, switch=3)
    train = pg.StepBatches(setup)
    seen, evaluated = [], []
    for epoch in range(len(setup.ends)):
        train.set_epoch(epoch)
        batches = list(train)
        assert len(batches) == len(train)
        seen += [batch.src for batch in batches]
        evaluated.append([batch is b for batch in pg.EvalBatch(train) for b in setup.val_batches])
    assert len(seen) == 7
    assert all(
        torch.equal(src, setup.train_data.take(setup.order[i]).src) for i, src in enumerate(seen)
    )
    # steps 2, 4, 6 read validation batch (step // 2) % 2; the epochs ending at 3 and 7 read none
    assert evaluated == [[False, True], [], [True, False], [False, True], []]


def test_the_trainer_reproduces_the_original_step_loop(tmp_path: Path) -> None:
    """Same updates, same one-batch evaluations, same running average and best step as the original loop."""
    setup = tiny_setup(tmp_path)
    trainer = pg.build_trainer(setup, "coverage", len(setup.ends), coverage=True)
    recipe = setup.recipe
    model = pg.PointerGenerator(coverage=True)
    model.load_state_dict(trainer.model.state_dict())
    optimizer = build_optimizer(model, recipe.optimizer, **recipe.optimizer_kwargs())
    amp = AMPStep(optimizer, precision=recipe.precision, max_grad_norm=recipe.max_grad_norm)
    averager, best_step, best = (
        RunningAverage(recipe.running_avg_decay, recipe.running_avg_clip),
        0,
        {},
    )
    for step in range(1, 6):  # the original's loop, written out
        model.train()
        batch = setup.train_data.take(setup.order[step - 1])
        log_final, attn = model(batch)
        amp.step(
            masked_nll(log_final, batch.target, batch.dec_mask)
            + recipe.cov_loss_wt * coverage_loss(attn, batch.dec_mask)
        )
        if step % 2 == 0:
            model.eval()
            val = setup.val_batches[(step // 2) % 2]
            with torch.no_grad():
                averager.update(masked_nll(model(val)[0], val.target, val.dec_mask))
            if averager.is_best:
                best_step, best = step, {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit()
    assert trainer.selector.avg == averager.avg and trainer.selector.count == averager.count == 2
    arm = pg.Arm(trainer, 0, 5, 0.0)
    assert arm.best_step() == best_step > 0
    last, saved_best = (
        load_checkpoint(tmp_path / "coverage" / name)["model"]
        for name in ("last.pt", "bestmodel.pt")
    )
    assert all(torch.equal(last[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(saved_best[k], v) for k, v in best.items())
    assert (
        trainer.progress.history[0]["val_coverage_loss"] > 0
    )  # TeacherForcedMetrics in the epoch record


def test_teacher_forced_metrics_match_the_losses() -> None:
    batch = oov_batch()
    log_final, attn = small_model()(batch)
    valid = batch.target != pg.PAD
    metrics = pg.TeacherForcedMetrics()
    metrics.update(pg.Outputs(log_final, attn), batch.target, valid=valid)
    result = metrics.compute()
    assert result == pg.TeacherForcedMetrics.compute_from_sums(metrics.sums())
    assert result["coverage_loss"] == pytest.approx(coverage_loss(attn, batch.dec_mask).item())
    hits = (log_final.argmax(-1) == batch.target)[valid]
    assert result["next_token_accuracy"] == pytest.approx(hits.float().mean().item())
    assert all(v != v for v in pg.TeacherForcedMetrics().compute().values())  # NaN before any batch


def test_a_non_finite_loss_stops_training_with_the_originals_message(tmp_path: Path) -> None:
    trainer = pg.build_trainer(tiny_setup(tmp_path), "no_coverage", 3, coverage=False)
    with torch.no_grad():
        trainer.model.out2.bias.fill_(float("nan"))
    with pytest.raises(
        NonFiniteLossError, match=r"^Loss is not finite\. Stopping\. \(epoch 1, step 1;"
    ):
        trainer.fit()
    assert trainer.progress.global_step == 1  # checked right after the step, as the original did
    assert not list(
        (tmp_path / "no_coverage").glob("*.pt")
    )  # no checkpoint holds weights trained on it


def test_greedy_decoding_stays_in_the_extended_vocabulary() -> None:
    batch = oov_batch()
    tokens, attn = small_model().greedy_decode(batch, max_steps=5)
    assert tokens.shape == (len(batch), 5) and attn.shape == (len(batch), 5, batch.src.shape[1])
    assert ((tokens >= 0) & (tokens < batch.n_ext)).all()


def test_batch_order_is_seeded_epochs_of_permutations() -> None:
    order = pg.batch_order(10, 3, 7, seed=5)
    assert order.shape == (7, 3) and torch.equal(order, pg.batch_order(10, 3, 7, seed=5))
    assert sorted(order[:3].flatten().tolist()) == sorted(
        set(order[:3].flatten().tolist())
    )  # no repeat in an epoch


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="min_words"):
        pg.make_split(5, 0, min_words=4, max_words=3)
    with pytest.raises(ValueError, match="p_oov"):
        pg.make_split(5, 0, p_oov=1.5)
    with pytest.raises(ValueError, match="vocab_size"):
        pg.PointerGenerator(vocab_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        pg.batch_order(4, 5, 1, seed=0)
    with pytest.raises(ValueError, match="eval_every"):
        pg.epoch_ends(5, 0, 0)
    for argv in (
        ["--steps", "0"],
        ["--coverage-steps", "700"],
        ["--coverage", "sometimes"],
        ["--cov-loss-wt", "-1"],
    ):
        with pytest.raises(SystemExit):
            pg.parse_args(argv)


def test_main_runs_a_tiny_configuration_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--steps",
        "6",
        "--coverage-steps",
        "3",
        "--train-size",
        "48",
        "--val-size",
        "20",
        "--batch-size",
        "8",
        "--eval-every",
        "2",
        "--seed",
        "1",
    ]
    assert pg.main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "coverage_report.json").read_text())
    assert set(report) == {"config", "recipe", "device", "runs"}
    assert report["recipe"] == "original" and report["config"]["coverage"] == "both"
    assert list(report["runs"]) == ["no_coverage", "coverage"]
    for name, run in report["runs"].items():
        assert set(run) == REPORT_KEYS, name
        assert run["steps"] == 6
        best = load_checkpoint(tmp_path / name / "bestmodel.pt")  # loads with weights_only=True
        assert best["global_step"] == run["best_step"] and best["config"]["model_coverage"] == (
            name == "coverage"
        )
    assert (
        report["runs"]["coverage"]["coverage_steps"] == 3
        and report["runs"]["no_coverage"]["coverage_steps"] == 0
    )
    out = capsys.readouterr().out
    assert "no_coverage" in out and "rep attn" in out and "coverage_report.json" in out
    # the baseline arm, continued from the shared last.pt, is the run that never parted
    assert pg.main([*argv, "--coverage", "off", "--out", str(tmp_path / "off")]) == 0
    for name in ("last.pt", "bestmodel.pt"):
        forked, straight = (
            load_checkpoint(d / "no_coverage" / name)["model"] for d in (tmp_path, tmp_path / "off")
        )
        assert all(torch.equal(forked[k], v) for k, v in straight.items()), name
