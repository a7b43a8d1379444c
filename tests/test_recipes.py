"""Every number of the reference's summary tables, asserted against trainkit.recipes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from trainkit import build_optimizer, recipes


def test_recipes_are_dataclasses():
    for recipe in (recipes.original(), recipes.proposed()):
        assert dataclasses.is_dataclass(recipe)
        assert not isinstance(recipe, type)


def test_original_pipeline_numbers():
    r = recipes.original()
    assert r.name == "original"
    # Optimizer: Adagrad lr 0.15, initial_accumulator_value 0.1; fixed LR
    assert r.optimizer == "adagrad"
    assert r.lr == 0.15
    assert r.initial_accumulator_value == 0.1
    assert r.schedule == "fixed"
    # Gradient clipping: global norm 2.0
    assert r.max_grad_norm == 2.0
    # Loss: masked NLL, optional coverage with weight 1.0
    assert r.loss == "masked_nll"
    assert r.coverage_optional is True
    assert r.cov_loss_wt == 1.0
    assert r.label_smoothing == 0.0
    # Model selection: running-average loss, decay 0.99, clip 12 -> "bestmodel"
    assert r.selection == "running_average"
    assert r.running_avg_decay == 0.99
    assert r.running_avg_clip == 12.0
    assert "bestmodel" in r.best_name
    # Checkpoints every 60 s, keep 3
    assert r.checkpoint_every_seconds == 60
    assert r.keep_last == 3
    # Precision fp32, no AMP
    assert r.precision == "fp32"
    assert r.amp is False
    # Non-finite loss: raise and stop; infinite loop
    assert r.nonfinite == "raise"
    assert r.loop == "infinite"


def test_proposed_pipeline_numbers():
    r = recipes.proposed()
    assert r.name == "proposed"
    # Optimizer: AdamW lr 3e-4..6.5e-4 (6.5e-4 in the GeoLife config), betas, eps, wd
    assert r.optimizer == "adamw"
    assert r.lr == 6.5e-4
    assert tuple(r.lr_range) == (3e-4, 6.5e-4)
    assert tuple(r.betas) == (0.9, 0.98)
    assert r.eps == 1e-9
    assert r.weight_decay == 0.015
    # LR: linear warmup 5 epochs + cosine to 1e-6 over 50
    assert r.schedule == "warmup_cosine"
    assert r.warmup == 5
    assert r.schedule_epochs == 50
    assert r.min_lr == 1e-6
    # Gradient clipping: global norm 0.8
    assert r.max_grad_norm == 0.8
    # Loss: CE with label smoothing 0.03, ignore_index 0, on log-probs
    assert r.loss == "label_smoothed_nll"
    assert r.label_smoothing == 0.03
    assert r.ignore_index == 0
    # Early stopping: best val loss -> best.pt, patience 5, min_epochs 8
    assert r.selection == "early_stopping"
    assert r.patience == 5
    assert r.min_epochs == 8
    assert r.best_name == "best.pt"
    # AMP on
    assert r.amp is True
    assert r.precision in ("auto", "fp16", "bf16")
    # Training config (GeoLife): 50 epochs, batch 128, seed 42
    assert r.epochs == 50
    assert r.batch_size == 128
    assert r.seed == 42
    assert r.loop == "epochs"
    # the reference left non-finite losses unhandled; the design says we must handle them
    assert r.nonfinite == "raise"


def test_recipes_are_fresh_values():
    a, b = recipes.proposed(), recipes.proposed()
    assert a == b
    assert recipes.original() != recipes.proposed()


@pytest.mark.parametrize(
    "factory, cls", [(recipes.original, torch.optim.Adagrad), (recipes.proposed, torch.optim.AdamW)]
)
def test_recipe_drives_build_optimizer(factory, cls):
    r = factory()
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, r.optimizer, **r.optimizer_kwargs())
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == r.lr
    if cls is torch.optim.Adagrad:
        assert group["initial_accumulator_value"] == 0.1
    else:
        assert (tuple(group["betas"]), group["eps"], group["weight_decay"]) == (
            (0.9, 0.98),
            1e-9,
            0.015,
        )


def test_proposed_schedule_from_recipe():
    from trainkit import WarmupCosineSchedule

    r = recipes.proposed()
    sched = WarmupCosineSchedule(r.lr, r.warmup, r.schedule_epochs, r.min_lr)
    assert sched(0) == 1.3e-4
    assert sched(4) == 6.5e-4
    assert sched(50) == 1e-6


def test_typed_builders_pass_the_recipe_numbers_on():
    p, o = recipes.proposed(), recipes.original()
    sched = p.lr_schedule()
    assert (sched.base_lr, sched.warmup, sched.total, sched.min_lr) == (6.5e-4, 5, 50, 1e-6)
    loss = p.label_smoothed_loss()
    assert (loss.smoothing, loss.ignore_index) == (0.03, 0)
    stopper = p.early_stopper()
    assert (stopper.patience, stopper.min_epochs) == (5, 8)
    ra = o.running_average()
    assert (ra.decay, ra.clip) == (0.99, 12.0)
    assert p.replace(patience=2).early_stopper().patience == 2


@pytest.mark.parametrize(
    "factory, builder, missing",
    [
        (recipes.original, "lr_schedule", "warmup, schedule_epochs, min_lr"),
        (recipes.original, "label_smoothed_loss", "ignore_index"),
        (recipes.original, "early_stopper", "patience, min_epochs"),
        (recipes.proposed, "running_average", "running_avg_decay, running_avg_clip"),
    ],
)
def test_typed_builders_name_the_fields_a_recipe_lacks(factory, builder, missing):
    recipe = factory()
    with pytest.raises(
        ValueError, match=f"recipe '{recipe.name}' has no {missing} \\(None\\), which {builder}"
    ):
        getattr(recipe, builder)()


def test_replace_checks_names_and_types():
    p = recipes.proposed()
    assert p.replace(lr=1e-3, epochs=3).lr == 1e-3
    assert p.replace(lr=1).lr == 1.0 and isinstance(p.replace(lr=1).lr, float)
    assert p.replace(betas=[0.8, 0.9]).betas == (0.8, 0.9)  # YAML lists become tuples
    with pytest.raises(
        ValueError, match=r"unknown key Recipe.grad_clip \(did you mean 'max_grad_norm'\?\)"
    ):
        p.replace(grad_clip=1.0)
    cases = [
        ({"epochs": 2.0}, "Recipe.epochs must be a 64-bit integer, got 2.0"),
        ({"epochs": 10**400}, "Recipe.epochs must be a 64-bit integer, got 1000"),
        ({"seed": True}, "Recipe.seed must be a 64-bit integer, got True"),
        ({"lr": float("nan")}, "Recipe.lr must be a finite number, got nan"),
        ({"lr": "0.1"}, "Recipe.lr must be a finite number, got '0.1'"),
        (
            {"precision": "fp8"},
            "Recipe.precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp8'",
        ),
        ({"warmup": "5"}, "Recipe.warmup must be a 64-bit integer or null, got '5'"),
        ({"betas": [0.9]}, "Recipe.betas must be a list of 2 numbers or null"),
        ({"amp": "no"}, "Recipe.amp must be true or false, got 'no'"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError) as info:
            p.replace(**change)
        assert str(info.value).startswith(message) and "\n" not in str(info.value), (
            change,
            str(info.value),
        )


def test_from_dict_inverts_to_dict():
    for recipe in (
        recipes.original(),
        recipes.proposed(),
        recipes.proposed().replace(optimizer="adagrad"),
    ):
        assert recipes.from_dict(recipe.to_dict()) == recipe
    values = recipes.original().to_dict()
    del values["lr"]
    with pytest.raises(ValueError, match="lacks field.*lr"):
        recipes.from_dict(values)


def test_ablation_groups_cover_every_training_difference_of_the_two_recipes():
    import dataclasses as dc

    original, proposed = recipes.original(), recipes.proposed()
    differ = {
        f.name
        for f in dc.fields(recipes.Recipe)
        if getattr(original, f.name) != getattr(proposed, f.name)
    }
    grouped = [field for fields in recipes.ABLATION_GROUPS.values() for field in fields]
    assert len(grouped) == len(set(grouped))  # each field in one group
    describe_only = {
        "name",
        "framework",
        "coverage_optional",
        "cov_loss_wt",
        "checkpoint_every_seconds",
        "best_name",
        "loop",
    }
    assert differ - set(grouped) == describe_only
    assert set(grouped) <= differ  # no group names a field the recipes agree on
    for fields in recipes.ABLATION_GROUPS.values():  # every group changes something
        assert any(getattr(original, f) != getattr(proposed, f) for f in fields)


def test_describe_names_the_reference_and_what_trains():
    assert recipes.original().describe() == (
        "original (reference: TensorFlow 1.x): adagrad lr 0.15, fixed, clip 2, masked_nll, "
        "running_average, fp32, coverage loss optional (weight 1.0)"
    )
    assert recipes.proposed().describe() == (
        "proposed (reference: PyTorch): adamw lr 0.00065, warmup_cosine, clip 0.8, "
        "label_smoothed_nll, early_stopping, AMP (precision auto)"
    )


def test_the_reference_recipes_and_every_ablation_row_depart_from_nothing():
    from trainkit.sweep import ablation_rows

    original, proposed = recipes.original(), recipes.proposed()
    assert original.departures() == [] and proposed.departures() == []
    for base, other in ((proposed, original), (original, proposed)):
        rows, _ = ablation_rows(
            base.to_dict(), other.to_dict(), recipes.ABLATION_GROUPS, all_name="all"
        )
        for name, row in rows.items():
            assert recipes.from_dict(row).departures() == [], name


@pytest.mark.parametrize(
    "changes, departure",
    [
        ({"lr": 3e-4}, None),  # the low end of the quoted range
        ({"lr": 1e-3}, "lr 0.001 is outside the 0.0003 to 0.00065 that the reference quotes"),
        (
            {"precision": "fp32"},
            "the reference used mixed precision, this recipe's precision is fp32",
        ),
        ({"cov_loss_wt": 1.0}, "cov_loss_wt 1 is set, but this pipeline has no coverage loss"),
    ],
)
def test_departures_name_each_setting_that_leaves_the_reference(changes, departure):
    departures = recipes.proposed().replace(**changes).departures()
    assert departures == ([] if departure is None else [departure])


def test_a_single_valued_lr_range_is_named_as_one_value():
    departures = recipes.original().replace(lr=0.1).departures()
    assert departures == ["lr 0.1 is outside the 0.15 that the reference quotes"]
