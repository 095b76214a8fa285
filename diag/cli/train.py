"""``diag finetune`` and ``diag sweep`` (registered into :mod:`diag.cli.main`).

Both take the fine-tuning recipe as flags generated from :class:`diag.train.FinetuneConfig` (the
dataclass is the single source of names, defaults and help; :mod:`diag.cli.flags`), or from a JSON file
(``--config run.json``, what :meth:`~diag.train.FinetuneConfig.save` writes). ``--preset small`` fills in
a budget that runs the bundled samples in minutes on a CPU; a config file overrides the preset and flags
given explicitly override both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from diag.cli.flags import add_config_flags, config_from_args
from diag.data import open_data
from diag.errors import ConfigError
from diag.models import load
from diag.pipeline import recommend_for_target
from diag.progress import ProgressCallback, TqdmProgress
from diag.report.schema import load_report
from diag.train import (
    PRESETS,
    FinetuneConfig,
    FinetuneResult,
    SweepResult,
    TrainCallback,
    TrainState,
    finetune,
    freeze_units,
    sweep,
)
from diag.train.search import DEFAULT_BUDGET, freeze_search, search_candidates

__all__ = ["finetune_config", "register"]

_EPILOG = (
    "Blocks (what --freeze counts), input side first: timm image models: stem, one per stage "
    "(blocks.0 ... blocks.6 for EfficientNet-Lite), pooled (conv_head + bn2); text encoders: embeddings, "
    "layer.0 ... layer.N. --freeze K freezes the first K blocks (0 tunes all; all/linear = a linear probe); "
    "--freeze blocks.4 freezes every block up to and including blocks.4. List them with --list-blocks. "
    "--freeze search tries the recommended depth against tuning only the last two blocks and tuning every "
    "block (the recommendation's alternative where the depth is one of those) with short trials "
    "(successive halving, extra cost at most --search-budget full runs; a depth that freezes more "
    "displaces the recommended one only by more than two standard errors of the validation accuracy) and "
    "trains the winner in full. "
    "Create a file named STOP in the output folder to stop cleanly; --resume continues."
)


def _file_settings(path: Path) -> dict[str, Any]:
    """The settings a ``--config`` file gives (validated; a bad file is named in the error)."""
    config = FinetuneConfig.from_file(path)  # raises ConfigError naming the file and the setting
    return {k: getattr(config, k) for k in json.loads(Path(path).read_text())}


def finetune_config(args: argparse.Namespace, **fixed: Any) -> FinetuneConfig:
    """The :class:`~diag.train.FinetuneConfig` of a ``finetune``/``sweep`` command line.

    Later layers win: the field defaults, the ``--preset``, the ``--config`` file, the flags given,
    then ``fixed``.
    """
    from_file = _file_settings(args.config) if getattr(args, "config", None) else {}
    return config_from_args(FinetuneConfig, args, PRESETS[args.preset], from_file, fixed)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        "-t",
        metavar="DATA",
        help="labelled training data: an image folder (one subfolder per class), a .csv/.jsonl/.parquet "
        "with text and label columns, an .npz, or samples:NAME",
    )
    p.add_argument("--backbone", "-b", required=True, help="a bundled name, timm:MODEL or hf:ID_OR_FOLDER")
    p.add_argument("--out", "-o", type=Path, metavar="DIR", help="output folder")
    p.add_argument(
        "--val",
        metavar="DATA",
        help="separate labelled validation data (default: a stratified --val-fraction of the target)",
    )
    p.add_argument(
        "--preset",
        choices=["default", "small"],
        default="default",
        help="a budget; small = 64 px images / 128 tokens, 8 epochs, batch 32 (minutes on a CPU)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a JSON file of fine-tuning settings (the keys are the flags below, with underscores; what "
        "FinetuneConfig.save writes); flags given on the command line override it, and it overrides --preset",
    )
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in --out and start over")
    p.add_argument("--text-column", default="text", help="text column of a table (default: text)")
    p.add_argument("--label-column", default="label", help="label column of a table (default: label)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no summary")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub: Any) -> None:
    """Add the ``finetune`` and ``sweep`` subcommands; each sets ``handler`` via ``set_defaults``."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a backbone on labelled target data, the first K blocks frozen",
        description=(
            "Fine-tune BACKBONE with a fresh linear head on the labelled target data, freezing the first "
            "K blocks. Writes DIR/metrics.jsonl (streamed), DIR/result.json, DIR/best.pt and, while the "
            "run is unfinished, the checkpoint DIR/last.pt."
        ),
        epilog=_EPILOG,
    )
    _add_common(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--list-blocks", action="store_true", help="list the backbone's blocks and exit")
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="with --freeze auto/search: take the recommendation of this `diag diagnose` report (default: "
        "compute it from the target's per-layer probe curve)",
    )
    p.add_argument(
        "--search-budget",
        type=float,
        default=DEFAULT_BUDGET,
        metavar="F",
        help="with --freeze search: extra compute for the trials, in full runs (default: %(default)s)",
    )
    add_config_flags(p, FinetuneConfig, "fine-tuning", metavars={"freeze": "SPEC"})
    p.set_defaults(handler=_cmd_finetune)

    p = sub.add_parser(
        "sweep",
        help="fine-tune at several freeze depths and from scratch, over seeds",
        description=(
            "Fine-tune at each freeze depth and from scratch with the same budget and seeds; write "
            "DIR/sweep.json (mean/std per depth, the best depth and the negative-transfer gap) and each run "
            "in DIR/runs/. Run it again to resume: finished runs are skipped."
        ),
        epilog=_EPILOG,
    )
    _add_common(p)
    p.add_argument(
        "--depths",
        metavar="LIST",
        help="comma-separated freeze depths (K, block names, all); default: 0, n/3, 2n/3, n",
    )
    p.add_argument("--seeds", default="0,1,2", metavar="LIST", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline")
    add_config_flags(
        p, FinetuneConfig, "fine-tuning (shared by every run)", skip=("freeze", "seed", "from_scratch")
    )
    p.set_defaults(handler=_cmd_sweep)


# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A job scheduler's (or the dashboard's) SIGTERM ends a run like Ctrl-C: result.json says
    ``interrupted`` and the last checkpoint stays for --resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _require(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        if getattr(args, n) is None:
            raise ConfigError(f"--{n} is required for `diag {args.command}`.")


def _auto_freeze(args: argparse.Namespace) -> int:
    """``--freeze auto``: the recommended depth (from ``--report``, or from the target's probe curve)."""
    return _recommendation(args).depth


def _recommendation(args: argparse.Namespace) -> Any:
    """The freeze recommendation for ``--freeze auto`` / ``search`` (printed unless quiet)."""
    report = load_report(args.report) if args.report else None
    image_size = getattr(args, "image_size", None) or PRESETS[args.preset].get("image_size")
    max_length = getattr(args, "max_length", None) or PRESETS[args.preset].get("max_length")
    bb = load(args.backbone, image_size=image_size, max_length=max_length)
    rec = recommend_for_target(_open(args, args.target), bb, report=report)
    if not args.quiet and not args.json:
        tuned = ", ".join(rec.tune) or "head only"
        print(f"--freeze {args.freeze}: K = {rec.depth} of {rec.n_blocks} (tune {tuned})")
        for line in rec.rationale:
            print(f"  {line}")
    return rec


def _open(args: argparse.Namespace, spec: str | None) -> Any:

    return (
        None
        if spec is None
        else open_data(spec, text_column=args.text_column, label_column=args.label_column)
    )


class _Bars(TrainCallback):
    """tqdm bars per epoch and one summary line per epoch (the CLI's training callback)."""

    def __init__(self, prefix: bool = False) -> None:
        self.prefix = prefix
        self.bar: Any = None

    def _name(self, state: TrainState) -> str:
        return f"{Path(state.out).name}: " if self.prefix else ""

    def on_train_start(self, state: TrainState) -> None:
        if state.resumed_from_epoch:
            tqdm.write(f"{self._name(state)}resuming after epoch {state.resumed_from_epoch}")

    def on_epoch_start(self, state: TrainState) -> None:
        self._close()
        phase = " (head only)" if state.phase == "lp" else ""
        self.bar = tqdm(
            total=state.steps_per_epoch,
            desc=f"{self._name(state)}epoch {state.epoch}/{state.epochs}{phase}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )

    def on_step_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if "loss" in record:
                self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.3f}")

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        self._close()
        tqdm.write(
            f"{self._name(state)}epoch {record['epoch']}/{state.epochs}  "
            f"loss {record['train_loss']:.4f}  train {record['train_acc']:.3f}  "
            f"val {record['val_acc']:.3f}  (best {record['best_val_acc']:.3f} @ {record['best_epoch']})  "
            f"{record['items_per_s']:.0f} items/s"
        )

    def on_train_end(self, state: TrainState, result: FinetuneResult) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cmd_finetune(args: argparse.Namespace) -> int:

    if getattr(args, "freeze", None) == "auto":
        _require(args, "target", "out")
        args.freeze = _auto_freeze(args)
    if getattr(args, "freeze", None) == "search":
        return _search(args)
    config = finetune_config(args)
    if args.list_blocks:
        bb = load(args.backbone, pretrained=False, image_size=config.image_size)
        units = freeze_units(bb)
        print(f"{args.backbone}: {len(units)} blocks (--freeze {len(units)} = linear probe)")
        print(f"{'K':>3}  {'block':<14}{'params':>12}")
        for u in units:
            print(f"{u.index + 1:>3}  {u.name:<14}{u.n_params:>12,}")
        return 0
    _require(args, "target", "out")
    callbacks = [] if args.quiet or args.json else [_Bars()]
    with _sigterm_as_interrupt():
        res = finetune(
            _open(args, args.target),
            args.backbone,
            config,
            out=args.out,
            val=_open(args, args.val),
            callbacks=callbacks,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    return _emit(args, res, _print_run)


def _search(args: argparse.Namespace) -> int:
    """``--freeze search``: successive halving from the recommendation, then the winner in full."""
    _require(args, "target", "out")
    if args.resume or args.overwrite:
        raise ConfigError("--freeze search resumes by itself (rerun it); it takes no --resume/--overwrite.")
    rec = _recommendation(args)
    args.freeze = rec.depth
    config = finetune_config(args)
    cands = search_candidates(rec.depth, rec.evidence.get("alternative_depth"), rec.n_blocks)
    callbacks = [] if args.quiet or args.json else [_Bars(prefix=True)]
    with _sigterm_as_interrupt():
        res, found = freeze_search(
            _open(args, args.target),
            args.backbone,
            config,
            out=args.out,
            candidates=cands,
            budget=args.search_budget,
            val=_open(args, args.val),
            callbacks=callbacks,
        )
    if not args.quiet and not args.json:
        for rung in found.rungs:
            scores = ", ".join(f"K {k}: {v:.3f}" for k, v in rung["scores"].items())
            margin = rung.get("incumbent_margin") or 0.0
            first = found.candidates[0]
            lead = f" (a depth freezing more than K {first} must beat it by {margin:.3f})" if margin else ""
            kept = ", ".join(map(str, rung["kept"]))
            print(f"rung at epoch {rung['epochs']}: {scores}{lead}; kept K {kept}")
        print(
            f"--freeze search: K = {found.winner} (candidates {found.candidates}); extra cost "
            f"{found.extra_cost:.2f} full runs (budget {found.budget:g}); details in {args.out}/search.json"
        )
    return _emit(args, res, _print_run)


def _emit(args: argparse.Namespace, res: Any, printer: Callable[[Any], None]) -> int:
    """Print a finished command's result: as JSON with ``--json``, through ``printer`` unless ``--quiet``."""
    if args.json:
        print(json.dumps(res.to_dict(), indent=1))
    elif not args.quiet:
        printer(res)
    return 0


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _print_run(res: Any) -> None:
    frozen = res.frozen_blocks
    shown = (
        "none"
        if not frozen
        else ", ".join(frozen)
        if len(frozen) <= 3
        else f"{frozen[0]}, {frozen[1]} ... {frozen[-1]}"
    )
    if res.status == "completed":
        early = " (early stop)" if res.stopped_early else ""
        print(
            f"best val accuracy {_pct(res.best_val_accuracy)} at epoch {res.best_epoch} of "
            f"{res.epochs_completed}{early}; final {_pct(res.final_val_accuracy)}"
        )
    else:
        print(
            f"{res.status} after {res.epochs_completed} complete epoch(s); best val accuracy "
            f"{_pct(res.best_val_accuracy)}. Continue with --resume."
        )
    print(
        f"{res.backbone['name']} ({'pretrained' if res.backbone['pretrained'] else 'from scratch'}), "
        f"{res.n_train} train / {res.n_val} val, {len(res.classes)} classes"
    )
    print(
        f"frozen {res.freeze} of {res.n_blocks} blocks ({shown}); {res.trainable_params:,} of "
        f"{res.total_params:,} parameters trained"
    )
    speed = f", {res.train_items_per_s:.1f} items/s" if res.train_items_per_s else ""
    print(f"wall {res.wall_time_s:.1f} s{speed} ({res.device['type']}, {res.precision})")
    print(f"wrote {Path(res.out) / 'result.json'}")


def _parse_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"--{what} must be a comma-separated list; got {text!r}.")
    return items


def _cmd_sweep(args: argparse.Namespace) -> int:

    _require(args, "target", "out")
    config = finetune_config(args)
    seeds: list[int] = []
    for s in _parse_list(args.seeds, "seeds"):
        if not s.isdigit():
            raise ConfigError(
                f"--seeds must be integers >= 0 separated by commas; got {s!r} in {args.seeds!r}."
            )
        seeds.append(int(s))
    depths: list[int | str] | None = None
    if args.depths:
        depths = [int(d) if d.isdigit() else d for d in _parse_list(args.depths, "depths")]
    quiet = args.quiet or args.json
    with _sigterm_as_interrupt():
        res: SweepResult = sweep(
            _open(args, args.target),
            args.backbone,
            config,
            out=args.out,
            depths=depths,
            seeds=seeds,
            scratch=not args.no_scratch,
            val=_open(args, args.val),
            callbacks=[] if quiet else [_Bars(prefix=True)],
            progress=ProgressCallback() if quiet else TqdmProgress(unit="run"),
            overwrite=args.overwrite,
        )
    return _emit(args, res, _print_sweep)


def _print_sweep(res: Any) -> None:
    print(
        f"{res.backbone['name']} on {res.target['name']}: {res.n_finished}/{res.n_runs} runs, "
        f"seeds {','.join(map(str, res.seeds))} ({res.status})"
    )
    print(f"{'depth':<10}{'frozen through':<18}{'best val acc (mean ± std)':<28}{'min':>7}{'max':>7}")
    rows = [*res.depths, *([res.scratch] if res.scratch else [])]
    for d in rows:
        through = "(random init)" if d["from_scratch"] else d["frozen_through"] or "(none: all tuned)"
        if d["freeze"] == res.n_blocks and not d["from_scratch"]:
            through += " = linear"
        stat = "n/a" if d["mean"] is None else f"{d['mean']:.4f} ± {d['std']:.4f}"
        lo = "" if d["min"] is None else f"{d['min']:.4f}"
        hi = "" if d["max"] is None else f"{d['max']:.4f}"
        mark = "  <- best" if not d["from_scratch"] and d["freeze"] == res.best_freeze else ""
        print(f"{d['label']:<10}{through:<18}{stat:<28}{lo:>7}{hi:>7}{mark}")
    if res.negative_transfer_gap is not None:
        verdict = "NEGATIVE TRANSFER" if res.negative_transfer else "pretrained helps"
        print(
            f"negative-transfer gap (best pretrained - scratch): {res.negative_transfer_gap:+.4f} ({verdict})"
        )
    print(f"wall {res.wall_time_s:.1f} s; wrote {Path(res.out) / 'sweep.json'}")
