"""``trainkit.export``: safetensors save/load of model weights (needs the ``safetensors`` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from trainkit.ema import EMA
from trainkit.export import load_safetensors, save_safetensors

try:
    import safetensors  # noqa: F401

    HAVE_SAFETENSORS = True
except ImportError:
    HAVE_SAFETENSORS = False
needs_safetensors = pytest.mark.skipif(
    not HAVE_SAFETENSORS,
    reason="safetensors is not installed (pip install 'trainkit-pt[safetensors]')",
)


class Tied(nn.Module):
    """An embedding tied to the output layer, plus a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.embed(x)))


@needs_safetensors
def test_roundtrip_of_a_model_with_tied_weights_and_buffers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tied()
    model.norm.running_mean.add_(1.5)
    path = save_safetensors(model, tmp_path / "model.safetensors")
    assert path == tmp_path / "model.safetensors" and [p.name for p in tmp_path.iterdir()] == [
        "model.safetensors"
    ]
    torch.manual_seed(1)
    fresh = Tied()
    tensors = load_safetensors(path, fresh)
    assert set(tensors) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh.out.weight is fresh.embed.weight  # still tied after loading


@needs_safetensors
def test_ema_weights_and_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    ema.update()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    path = save_safetensors(
        ema.model_state_dict(), tmp_path / "ema.safetensors", metadata={"epoch": "7"}
    )
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "epoch": "7"}
    loaded = load_safetensors(path)
    assert torch.equal(loaded["weight"], ema.model_state_dict()["weight"])


@needs_safetensors
def test_mismatched_model_raises_one_line(tmp_path: Path) -> None:
    path = save_safetensors(nn.Linear(3, 2), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"mis-shaped.*weight \[2, 3\] vs \[4, 3\]") as info:
        load_safetensors(path, nn.Linear(3, 4))
    assert "\n" not in str(info.value)


@needs_safetensors
def test_bad_inputs_raise_naming_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_or_state"):
        save_safetensors([torch.zeros(2)], tmp_path / "x.safetensors")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'step'"):
        save_safetensors({"w": torch.zeros(2), "step": 3}, tmp_path / "x.safetensors")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="metadata"):
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "x.safetensors", metadata={"epoch": 7})  # type: ignore[dict-item]
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_safetensors(tmp_path / "nothing.safetensors")
    assert not list(tmp_path.iterdir())


def test_missing_package_gives_a_one_line_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        sys.modules, "safetensors", None
    )  # import safetensors now raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"pip install 'trainkit-pt\[safetensors\]'"):
        save_safetensors(nn.Linear(2, 2), tmp_path / "m.safetensors")


@needs_safetensors
def test_the_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_docs import DOCS, python_blocks

    blocks = [code for _, code, skipped in python_blocks(DOCS / "export.md") if skipped]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/export.md", "exec"), {"__name__": "docs_export"})
    assert (tmp_path / "model.safetensors").is_file()
