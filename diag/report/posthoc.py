"""The results of ``diag compare`` and ``diag deploy-check`` (:mod:`diag.pipeline.posthoc`): typed,
JSON-native dataclasses, their tables and sentences, and the Markdown / HTML export.

Files, written atomically beside the run: ``RUN/compare.json`` and ``RUN/deploy.json`` (tagged
:data:`COMPARE_SCHEMA` and :data:`DEPLOY_SCHEMA`), each with a ``.md`` and an ``.html`` rendering; a
sweep's folder gets the ``compare.json`` of all its runs with the trade-off curve (target accuracy vs
forgetting per freeze depth).
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, cast

from diag.errors import DataError
from diag.fileio import atomic_write_bytes

__all__ = [
    "COMPARE_SCHEMA",
    "DEPLOY_SCHEMA",
    "BlockChange",
    "CompareReport",
    "DeployReport",
    "Forgetting",
    "LayerDrift",
    "RunComparison",
    "load_compare",
    "load_deploy",
]

COMPARE_SCHEMA = "diag.compare/1"
DEPLOY_SCHEMA = "diag.deploy/1"


def _f(v: float | None, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _build(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class BlockChange:
    """One block of a fine-tuned run against its pretrained weights, on the same target items.

    ``weight_change`` is ``||θ_ft − θ_pre|| / ||θ_pre||`` over the block's parameters; ``bit_identical``
    also covers its buffers (BatchNorm statistics); ``cka`` is linear CKA of the features at the probe
    point of the same name; ``c2st_auc`` (with CI), ``mmd2`` and ``p_adjusted`` the shift between the
    pretrained and the fine-tuned features there (0.5 AUC = indistinguishable).
    """

    name: str
    index: int
    frozen: bool
    n_params: int
    weight_change: float
    bit_identical: bool
    cka: float | None
    c2st_auc: float | None = None
    c2st_auc_ci: list[float] | None = None
    mmd2: float | None = None
    p_adjusted: float | None = None


@dataclass(frozen=True)
class Forgetting:
    """Probe accuracies of the pretrained and the fine-tuned pooled features on reference data.

    ``forgetting_linear`` / ``forgetting_knn`` = pretrained − fine-tuned (points of accuracy lost; ≤ 0 =
    nothing forgotten); ``source_top1_agreement``: share of items whose source-head top-1 class is the
    same on the fine-tuned body (None without a source head).
    """

    reference: str
    n: int
    linear_pretrained: float
    linear_finetuned: float
    knn_pretrained: float
    knn_finetuned: float
    source_top1_agreement: float | None
    pooled_cka: float

    @property
    def forgetting_linear(self) -> float:
        return self.linear_pretrained - self.linear_finetuned

    @property
    def forgetting_knn(self) -> float:
        return self.knn_pretrained - self.knn_finetuned

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "forgetting_linear": self.forgetting_linear,
            "forgetting_knn": self.forgetting_knn,
        }


@dataclass(frozen=True)
class RunComparison:
    """One run: its blocks, the frozen-block check and (with reference data) its forgetting."""

    run: str
    backbone: str
    freeze: int
    n_blocks: int
    target_accuracy: float | None
    data: str
    n_items: int
    blocks: list[BlockChange]
    frozen_check_ok: bool
    frozen_check_violations: list[str]
    forgetting: Forgetting | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["blocks"] = [asdict(b) for b in self.blocks]
        d["forgetting"] = None if self.forgetting is None else self.forgetting.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunComparison:
        d = dict(d)
        d["blocks"] = [_build(BlockChange, b) for b in d.get("blocks", [])]
        d["forgetting"] = None if d.get("forgetting") is None else _build(Forgetting, d["forgetting"])
        return cast(RunComparison, _build(cls, d))

    @property
    def mean_tuned_cka(self) -> float | None:
        """Mean CKA over the tuned (unfrozen) blocks with a probe point: how far fine-tuning moved them."""
        vals = [b.cka for b in self.blocks if not b.frozen and b.cka is not None]
        return sum(vals) / len(vals) if vals else None


class _Saved:
    FILE: ClassVar[str]
    SCHEMA_ID: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_markdown(self) -> str:
        raise NotImplementedError

    def save(self, folder: str | Path) -> Path:
        """Write ``FILE`` (JSON), and its ``.md`` and ``.html`` renderings, atomically into ``folder``."""
        path = Path(folder) / self.FILE
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        md = self.to_markdown()
        atomic_write_bytes(path.with_suffix(".md"), md.encode())
        atomic_write_bytes(path.with_suffix(".html"), _html(md, self.FILE).encode())
        return path


@dataclass(frozen=True)
class CompareReport(_Saved):
    """``diag compare``: one :class:`RunComparison` per run, and the curve over freeze depths."""

    runs: list[RunComparison]
    config: dict[str, Any] = field(default_factory=dict)
    schema: str = COMPARE_SCHEMA

    FILE: ClassVar[str] = "compare.json"
    SCHEMA_ID: ClassVar[str] = COMPARE_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "config": self.config, "runs": [r.to_dict() for r in self.runs],
                "curve": self.curve()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompareReport:
        if d.get("schema") != COMPARE_SCHEMA:
            raise DataError(
                f"compare schema {d.get('schema')!r} is not {COMPARE_SCHEMA!r}; rerun diag compare."
            )
        return cls(runs=[RunComparison.from_dict(r) for r in d.get("runs", [])], config=d.get("config", {}))

    def curve(self) -> list[dict[str, Any]]:
        """Per run, by freeze depth: target accuracy beside forgetting and the tuned blocks' mean CKA."""
        out = []
        for r in sorted(self.runs, key=lambda r: r.freeze):
            f = r.forgetting
            out.append(
                {
                    "freeze": r.freeze,
                    "run": r.run,
                    "target_accuracy": r.target_accuracy,
                    "forgetting_linear": None if f is None else f.forgetting_linear,
                    "forgetting_knn": None if f is None else f.forgetting_knn,
                    "source_top1_agreement": None if f is None else f.source_top1_agreement,
                    "mean_tuned_cka": r.mean_tuned_cka,
                }
            )
        return out

    def to_markdown(self) -> str:
        lines = ["# After fine-tuning: what changed and what was forgotten", ""]
        if len(self.runs) > 1:
            lines += [
                "## Trade-off per freeze depth",
                "",
                "| K | target acc | forgetting (linear) | forgetting (k-NN) | source top-1 agreement "
                "| mean CKA (tuned) |",
                "|---|---|---|---|---|---|",
            ]
            for c in self.curve():
                lines.append(
                    f"| {c['freeze']} | {_f(c['target_accuracy'])} | {_f(c['forgetting_linear'])} | "
                    f"{_f(c['forgetting_knn'])} | {_f(c['source_top1_agreement'])} | "
                    f"{_f(c['mean_tuned_cka'])} |"
                )
            lines.append("")
        for r in self.runs:
            check = "passed" if r.frozen_check_ok else f"FAILED at {', '.join(r.frozen_check_violations)}"
            lines += [
                f"## {r.run}",
                "",
                f"{r.backbone}, {r.freeze} of {r.n_blocks} blocks frozen, best validation accuracy "
                f"{_f(r.target_accuracy)}; features on {r.n_items} items of {r.data}. Frozen-block check "
                f"(bit-identical weights, CKA 1): {check}.",
                "",
                "| block | frozen | weight change | CKA | C2ST AUC [95% CI] | MMD² | p (Holm) |",
                "|---|---|---|---|---|---|---|",
            ]
            for b in r.blocks:
                ci = "" if b.c2st_auc_ci is None else f" [{b.c2st_auc_ci[0]:.3f}, {b.c2st_auc_ci[1]:.3f}]"
                lines.append(
                    f"| {b.name} | {'yes' if b.frozen else 'no'} | {b.weight_change:.4g} | {_f(b.cka, 4)} | "
                    f"{_f(b.c2st_auc)}{ci} | {_f(b.mmd2, 4)} | {_f(b.p_adjusted, 4)} |"
                )
            f = r.forgetting
            if f is not None:
                agree = "" if f.source_top1_agreement is None else (
                    f" The source head's top-1 is unchanged on {f.source_top1_agreement:.1%} of the items."
                )  # fmt: skip
                lines += [
                    "",
                    f"Forgetting on {f.n} items of {f.reference}: linear probe {f.linear_pretrained:.3f} → "
                    f"{f.linear_finetuned:.3f} ({f.forgetting_linear:+.3f} lost), "
                    f"k-NN {f.knn_pretrained:.3f} → "
                    f"{f.knn_finetuned:.3f} ({f.forgetting_knn:+.3f} lost); pooled-feature CKA "
                    f"{f.pooled_cka:.3f}.{agree}",
                ]
            lines.append("")
        return "\n".join(lines)


@dataclass(frozen=True)
class LayerDrift:
    """fp32 vs int8 features at one probe point: relative L2 error, CKA, and the shift statistics."""

    name: str
    index: int
    relative_error: float
    cka: float
    c2st_auc: float
    c2st_auc_ci: list[float]
    mmd2: float
    p_adjusted: float


@dataclass(frozen=True)
class DeployReport(_Saved):
    """``diag deploy-check``: int8 vs fp32 of a fine-tuned run on the CPU.

    ``accuracy_drop`` = fp32 − int8 accuracy on the same items, with a paired bootstrap CI;
    ``size_ratio`` and ``latency[...]['ratio']`` are int8 / fp32 (below 1 = smaller, faster).
    """

    run: str
    backbone: str
    data: str
    n_items: int
    n_calibration: int
    accuracy_fp32: float
    accuracy_int8: float
    accuracy_drop: float
    accuracy_drop_ci: list[float]
    agreement: float
    quantization: dict[str, Any]
    size_ratio: float
    latency: dict[str, dict[str, float]]
    threads: int
    cpu_count: int
    layers: list[LayerDrift]
    schema: str = DEPLOY_SCHEMA

    FILE: ClassVar[str] = "deploy.json"
    SCHEMA_ID: ClassVar[str] = DEPLOY_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["layers"] = [asdict(x) for x in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeployReport:
        if d.get("schema") != DEPLOY_SCHEMA:
            raise DataError(
                f"deploy schema {d.get('schema')!r} is not {DEPLOY_SCHEMA!r}; rerun diag deploy-check."
            )
        d = dict(d)
        d["layers"] = [_build(LayerDrift, x) for x in d.get("layers", [])]
        return cast(DeployReport, _build(cls, d))

    @property
    def worst_layer(self) -> LayerDrift | None:
        return max(self.layers, key=lambda x: x.relative_error, default=None)

    def to_markdown(self) -> str:
        q = self.quantization
        lo, hi = self.accuracy_drop_ci
        worst = self.worst_layer
        lat = ", ".join(
            f"{k.replace('_', ' ')}: {v['fp32_ms']:.1f} → {v['int8_ms']:.1f} ms (×{v['ratio']:.2f})"
            for k, v in self.latency.items()
        )
        lines = [
            "# Deployment check: int8 on the CPU",
            "",
            f"{self.run} ({self.backbone}) on {self.n_items} items of {self.data}.",
            "",
            f"- accuracy: fp32 {self.accuracy_fp32:.3f}, int8 {self.accuracy_int8:.3f}; drop "
            f"{100 * self.accuracy_drop:+.1f} points (95% CI {100 * lo:+.1f} to {100 * hi:+.1f}, paired "
            f"bootstrap); same prediction on {self.agreement:.1%} of the items",
            f"- size: {q['fp32_bytes'] / 1e6:.2f} MB → {q['int8_bytes'] / 1e6:.2f} MB "
            f"(×{self.size_ratio:.2f})",
            f"- CPU latency (median of interleaved rounds, {self.threads} thread(s) of {self.cpu_count} "
            f"cores): {lat}",
            f"- method: {q['method']} ({q['backend']}), calibrated on {self.n_calibration} items; "
            f"{q['message']}",
        ]
        lines += [f"- note: {n}" for n in q.get("notes", [])]
        if worst is not None:
            lines.append(f"- largest drift at {worst.name} (relative error {worst.relative_error:.3f})")
        lines += [
            "",
            "| layer | relative error | CKA | C2ST AUC [95% CI] | MMD² | p (Holm) |",
            "|---|---|---|---|---|---|",
        ]
        for x in self.layers:
            lines.append(
                f"| {x.name} | {x.relative_error:.4f} | {x.cka:.4f} | {x.c2st_auc:.3f} "
                f"[{x.c2st_auc_ci[0]:.3f}, {x.c2st_auc_ci[1]:.3f}] | {x.mmd2:.4g} | {x.p_adjusted:.4f} |"
            )
        return "\n".join(lines) + "\n"


def _read(path: Path, file: str) -> dict[str, Any]:
    p = path / file if path.is_dir() else path
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{p}: not a readable {file} ({exc}).") from None
    if not isinstance(d, dict):
        raise DataError(f"{p}: not a {file} (a JSON object is expected).")
    return d


def load_compare(path: str | Path) -> CompareReport:
    """Read ``RUN/compare.json`` (or a sweep's)."""
    return CompareReport.from_dict(_read(Path(path), CompareReport.FILE))


def load_deploy(path: str | Path) -> DeployReport:
    """Read ``RUN/deploy.json``."""
    return DeployReport.from_dict(_read(Path(path), DeployReport.FILE))


def _html(md: str, title: str) -> str:
    """A self-contained HTML page of the Markdown this module writes (headings, lists, tables, text)."""
    out: list[str] = []
    in_table = in_list = False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table>")
                out.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    out += ["</table>"] if in_table else []
    out += ["</ul>"] if in_list else []
    style = (
        "body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
