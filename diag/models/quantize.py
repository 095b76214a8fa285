"""Post-training int8 quantization of a backbone for CPU deployment: one small adapter over
``torch.ao.quantization``.

Two methods, after PyTorch's post-training quantization recipes (Krishnamoorthi, "Quantizing deep
convolutional networks for efficient inference: A whitepaper", arXiv:1806.08342, 2018; Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR
2018):

- ``dynamic`` (transformer encoders): every ``nn.Linear`` gets int8 weights; activations are quantized
  on the fly per batch (``torch.ao.quantization.quantize_dynamic``), as in Zafrir et al., "Q8BERT"
  (2019) and PyTorch's dynamic-quantization BERT tutorial.
- ``static`` (conv nets): int8 weights and activations, the activation ranges calibrated on a few hundred
  real inputs (histogram/min-max observers, FX graph mode ``prepare_fx``/``convert_fx`` with the x86
  backend's default qconfig; convolution + BatchNorm + activation fused). Each block of the backbone
  (the children of its stages, and the stem and head convolutions with their BatchNorm) is quantized as
  its own graph, so the block and stage modules stay in place and the probe points read every layer of
  the int8 model; the cost is a quantize/dequantize pair at each block boundary.

Before tracing, two rewrites make TF-ported timm nets (``tf_efficientnet_lite*``) traceable without
changing their float output: "same" convolutions whose padding depends on the input size (TensorFlow's
SAME rule, padding ``max((⌈i/s⌉-1)s + (k-1)d + 1 - i, 0)`` split with the extra pixel after) get the
padding of the calibration input size as a fixed ``ZeroPad2d``; a BatchNorm fused with its activation
(timm's ``BatchNormAct2d``) becomes a plain ``BatchNorm2d`` followed by the activation. The int8 model
therefore runs at the calibration input size only.

What cannot be quantized stays in float and is listed in :class:`QuantizationReport` (module types and
paths) with a sentence for users. :func:`quantize_backbone` is the one entry point; another backend
(torchao) can replace the two ``_quantize_*`` functions without changing callers.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import (
    HistogramObserver,
    default_dynamic_qconfig,
    get_default_qconfig_mapping,
    quantize_dynamic,
)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from diag.errors import ConfigError, DiagError
from diag.models.base import Backbone

__all__ = [
    "METHODS",
    "ClampedHistogramObserver",
    "QuantizationError",
    "QuantizationReport",
    "model_bytes",
    "quantize_backbone",
    "resolve_method",
]

log = logging.getLogger(__name__)

METHODS = ("auto", "dynamic", "static")
_FLOAT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm, nn.Embedding)


class QuantizationError(DiagError):
    """A model that this adapter cannot quantize (the message says what and what to do)."""


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_backbone` did.

    Attributes
    ----------
    method : ``dynamic`` or ``static``.
    backend : the library and its kernel engine (``torch.ao.quantization/x86``).
    quantized : module paths replaced by int8 modules (dynamic: the Linear layers; static: the graphs).
    left_in_float : parameterised module type -> paths left in float32.
    n_calibration : items the static method calibrated on (0 for dynamic).
    input_size : the spatial input size a static int8 conv net is fixed to (None: any).
    fp32_bytes, int8_bytes : serialized state dict sizes.
    message : one sentence on what stayed in float and why.
    """

    method: str
    backend: str
    quantized: list[str]
    left_in_float: dict[str, list[str]]
    n_calibration: int
    input_size: list[int] | None
    fp32_bytes: int
    int8_bytes: int
    message: str
    notes: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.int8_bytes / self.fp32_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size_ratio": round(self.size_ratio, 4)}


def _saved(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def model_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in bytes (what a deployment ships)."""
    return len(_saved(model))


def _engine() -> str:
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise QuantizationError(
        f"this torch build has no int8 CPU kernels (supported engines: {engines}); install a torch "
        "wheel built with FBGEMM (x86) or QNNPACK (ARM)."
    )


def resolve_method(model: nn.Module, method: str = "auto") -> str:
    """``static`` for a network with 2-d convolutions, ``dynamic`` otherwise (``method`` when not auto)."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    if method != "auto":
        return method
    return "static" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "dynamic"


def quantize_backbone(
    backbone: Backbone,
    calibration: Iterable[Any] = (),
    *,
    method: str = "auto",
    keep_float: Sequence[str] = (),
) -> tuple[Backbone, QuantizationReport]:
    """An int8 copy of ``backbone`` for the CPU (the backbone itself is not modified).

    Parameters
    ----------
    backbone : Backbone
        A loaded backbone, e.g. a fine-tuned body (``NAME@RUN``).
    calibration : iterable of batches
        What :meth:`Backbone.capture` takes (from :meth:`Backbone.batches`); needed by ``static``, whose
        activation ranges it sets (a few hundred real target items). All batches must share one input size.
    method : {"auto", "dynamic", "static"}
        ``auto``: ``static`` for a network with 2-d convolutions, else ``dynamic``.
    keep_float : sequence of str
        Module paths to leave in float (e.g. a task head read separately).

    Returns
    -------
    (Backbone, QuantizationReport)
        The copy runs on the CPU; its probe points are the same as the original's.

    Raises
    ------
    ConfigError
        Unknown ``method``, or ``static`` without calibration batches.
    QuantizationError
        No int8 kernels in this torch build, or a block that cannot be traced (the message names it).
    """
    method = resolve_method(backbone.model, method)
    engine = _engine()
    qbb = copy.deepcopy(backbone).to("cpu")
    model = qbb.model.eval()
    fp32_bytes = model_bytes(model)
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            # torch.ao.quantization announces its move to torchao and the deprecation of its observers'
            # options on every call; this adapter is the place that swaps the backend, so its notices
            # are not the user's concern.
            warnings.simplefilter("ignore")
            notes: list[str] = []
            size: list[int] | None = None
            if method == "dynamic":
                quantized, n_cal = _quantize_dynamic(model, keep_float), 0
            else:
                quantized, n_cal, size, notes = _quantize_static(qbb, list(calibration), keep_float, engine)
    finally:
        torch.backends.quantized.engine = prev
    qbb.model = model.eval()
    # An int8 state dict holds packed parameters (tuples, quantized tensors) that the float fingerprint
    # cannot hash; the saved bytes identify the quantized weights instead.
    saved = _saved(model)
    digest = "int8-" + hashlib.sha256(saved).hexdigest()
    qbb.__class__ = type(
        f"Int8{type(qbb).__name__}", (type(qbb),), {"weights_fingerprint": lambda self: digest}
    )
    qbb.weights = f"{backbone.weights} (int8 {method})"
    left = _float_modules(model, quantized)
    n_left = sum(len(v) for v in left.values())
    listing = "; ".join(
        f"{t} ×{len(v)} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for t, v in left.items()
    )
    why = (
        " (dynamic quantization covers Linear layers only; embeddings and LayerNorm keep float)"
        if method == "dynamic"
        else ""
    )
    left_text = (
        f"{n_left} parameterised module(s) left in float32: {listing}{why}"
        if n_left
        else ("nothing with parameters left in float32")
    )
    message = f"{method} int8 ({engine}): {len(quantized)} module(s) quantized; {left_text}."
    report = QuantizationReport(
        method=method,
        backend=f"torch.ao.quantization/{engine}",
        quantized=quantized,
        left_in_float=left,
        n_calibration=n_cal,
        input_size=size,
        fp32_bytes=fp32_bytes,
        int8_bytes=len(saved),
        message=message,
        notes=notes,
    )
    log.info("%s", message)
    return qbb, report


def _inside(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _float_modules(model: nn.Module, quantized: Sequence[str]) -> dict[str, list[str]]:
    """Parameterised float modules (by type) outside the quantized ones."""
    out: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if not name or _inside(name, quantized) or not isinstance(m, _FLOAT_TYPES):
            continue
        if type(m).__module__.startswith("torch.ao"):
            continue  # quantized modules subclass their float types
        if any(p.is_floating_point() for p in m.parameters(recurse=False)):
            out.setdefault(type(m).__name__, []).append(name)
    return out


def _quantize_dynamic(model: nn.Module, keep_float: Sequence[str]) -> list[str]:
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and not _inside(n, keep_float)]
    if not names:
        raise QuantizationError(
            "dynamic int8 quantization found no nn.Linear layer to quantize; use method='static' for a "
            "conv net."
        )
    quantize_dynamic(model, {n: default_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)
    return names


# -- static ---------------------------------------------------------------------------------------------


def _same_padding(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one axis: (before, after), the extra pixel after."""
    pad = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return pad // 2, pad - pad // 2


def _is_dynamic_same(m: nn.Module) -> bool:
    # A Conv2d subclass with its own forward pads by the input size at run time (timm's Conv2dSame).
    return isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d and type(m).forward is not nn.Conv2d.forward


def _plain_conv(m: Any) -> nn.Conv2d:
    conv = nn.Conv2d(
        m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups, m.bias is not None
    )
    conv.load_state_dict(m.state_dict())
    return conv


def _split_bn_act(m: nn.Module) -> nn.Module:
    """timm's BatchNormAct2d -> BatchNorm2d followed by its activation (same float output in eval)."""
    bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)  # type: ignore[arg-type]
    bn.load_state_dict(m.state_dict(), strict=False)
    parts: list[nn.Module] = [bn]
    drop, act = getattr(m, "drop", None), getattr(m, "act", None)
    if drop is not None and not isinstance(drop, nn.Identity):
        parts.append(drop)
    if act is not None and not isinstance(act, nn.Identity):
        parts.append(act)
    return nn.Sequential(*parts).eval()


def _is_bn_act(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d) and type(m) is not nn.BatchNorm2d and hasattr(m, "act")


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _record(model: nn.Module, run: Any, paths: Sequence[str], *, outputs: bool = False) -> dict[str, Any]:
    """One forward pass (``run()``) recording the first positional input (or output) of each module."""
    seen: dict[str, Any] = {}

    def make(p: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], y: Any) -> None:
            seen.setdefault(p, (args[0] if args else None, y if outputs else None))

        return hook

    handles = [model.get_submodule(p).register_forward_hook(make(p)) for p in paths]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _clamped_convs(model: nn.Module, run: Any) -> dict[str, tuple[float, float]]:
    """Convolutions whose output (through a BatchNorm) is clipped by a Hardtanh/ReLU6: path -> bounds.

    The x86 backend does not fuse ReLU6 into a convolution and lets it share the convolution's output
    observer, which then spans the pre-activation range (±100 in EfficientNet-Lite) and leaves a handful
    of int8 steps for [0, 6]. Observing the clipped values instead makes the int8 output saturate exactly
    where ReLU6 clips, which is ReLU6 itself (as TFLite's fused ReLU6 kernels do).
    """
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.Hardtanh)
    mods = {n: m for n, m in model.named_modules() if n and isinstance(m, kinds)}
    keep: list[Any] = []  # holds the tensors so their ids stay unique during the pass
    producer: dict[int, str] = {}
    consumed: dict[str, int] = {}

    def make(n: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], y: Any) -> None:
            if args and isinstance(args[0], torch.Tensor):
                keep.append(args[0])
                consumed[n] = id(args[0])
            if isinstance(y, torch.Tensor):
                keep.append(y)
                producer.setdefault(id(y), n)

        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in mods.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    out: dict[str, tuple[float, float]] = {}
    for n, m in mods.items():
        if not isinstance(m, nn.Hardtanh) or n not in consumed:
            continue
        src = producer.get(consumed[n])
        if src is not None and isinstance(mods[src], nn.BatchNorm2d) and src in consumed:
            src = producer.get(consumed[src])
        if src is not None and isinstance(mods[src], nn.Conv2d):
            out[src] = (float(m.min_val), float(m.max_val))
    keep.clear()
    return out


class ClampedHistogramObserver(HistogramObserver):
    """Observes ``x.clamp(lo, hi)``: the range after the ReLU6 that follows a convolution."""

    def __init__(self, lo: float = 0.0, hi: float = 6.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.lo, self.hi = lo, hi

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        super().forward(x_orig.clamp(self.lo, self.hi))
        return x_orig


def _clamp_outputs(prepared: Any, unit: str, clamps: dict[str, tuple[float, float]], engine: str) -> None:
    """Swap the output observer of each clipped convolution of ``prepared`` (the graph of ``unit``) for
    one that observes the clipped values (see :func:`_clamped_convs`)."""
    rel = {p[len(unit) + 1 :]: b for p, b in clamps.items() if p.startswith(unit + ".")}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or node.target not in rel:
            continue
        lo, hi = rel[node.target]
        for user in node.users:
            if user.op == "call_module" and "activation_post_process" in str(user.target):
                obs = ClampedHistogramObserver(lo=lo, hi=hi, reduce_range=engine in ("x86", "fbgemm"))
                setattr(prepared, str(user.target), obs)


def _quantize_static(
    qbb: Backbone, batches: list[Any], keep_float: Sequence[str], engine: str
) -> tuple[list[str], int, list[int] | None, list[str]]:
    if not batches:
        raise ConfigError(
            "static int8 quantization needs calibration batches (a few hundred real inputs) to set the "
            "activation ranges; pass calibration=..."
        )
    model = qbb.model
    first = batches[0]
    size = list(first.shape[-2:]) if isinstance(first, torch.Tensor) and first.ndim == 4 else None
    notes: list[str] = []

    # 1. freeze input-dependent SAME padding at the calibration size; split BatchNorm+activation modules.
    same = [n for n, m in model.named_modules() if n and _is_dynamic_same(m) and not _inside(n, keep_float)]
    shapes = _record(model, lambda: qbb.capture(first), same)
    for n in same:
        m: Any = model.get_submodule(n)
        x = shapes[n][0]
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        top, bottom = _same_padding(int(x.shape[-2]), kh, sh, dh)
        left, right = _same_padding(int(x.shape[-1]), kw, sw, dw)
        _set(model, n, nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), _plain_conv(m)).eval())
    if same:
        notes.append(f"{len(same)} SAME-padded convolution(s) fixed to the input size {size}")
    for n in [n for n, m in model.named_modules() if n and _is_bn_act(m)]:
        _set(model, n, _split_bn_act(model.get_submodule(n)))

    # 2. the units: the children of every stage, and top-level conv -> norm pairs (stem, head) fused.
    layout = qbb.block_layout(model)
    units: list[str] = []
    for path, _ in layout.modules:
        stage = model.get_submodule(path)
        kids = [f"{path}.{c}" for c, _ in stage.named_children()]
        units += kids if kids else []
    tops = [n for n, _ in model.named_children() if not _inside(n, [p for p, _ in layout.modules])]
    top_io = _record(model, lambda: qbb.capture(first), tops, outputs=True)
    for conv_name in tops:
        conv = model.get_submodule(conv_name)
        if conv_name not in top_io or not any(isinstance(m, nn.Conv2d) for m in conv.modules()):
            continue
        out = top_io[conv_name][1]
        nxt = next((n for n in tops if n in top_io and top_io[n][0] is out and n != conv_name), None)
        if nxt is not None and any(isinstance(m, nn.BatchNorm2d) for m in model.get_submodule(nxt).modules()):
            _set(model, conv_name, nn.Sequential(conv, model.get_submodule(nxt)).eval())
            _set(model, nxt, nn.Identity())
            units.append(conv_name)
    units = [u for u in units if not _inside(u, keep_float)]

    # 3. prepare each unit on its real input, calibrate the whole model, convert.
    inputs = _record(model, lambda: qbb.capture(first), units)
    clamps = _clamped_convs(
        model, lambda: qbb.capture(first[:8] if isinstance(first, torch.Tensor) else first)
    )
    qmap = get_default_qconfig_mapping(engine)
    done: list[str] = []
    for u in units:
        if u not in inputs:
            continue  # not on the forward path
        try:
            prepared = prepare_fx(model.get_submodule(u), qmap, example_inputs=(inputs[u][0],))
            _clamp_outputs(prepared, u, clamps, engine)
        except Exception as exc:  # a block FX cannot trace stays in float, named in the report
            notes.append(f"{u} left in float: not traceable ({type(exc).__name__}: {str(exc)[:120]})")
            log.warning("static int8: %s", notes[-1])
            continue
        _set(model, u, prepared)
        done.append(u)
    with torch.no_grad():
        for b in batches:
            if isinstance(b, torch.Tensor) and size is not None and list(b.shape[-2:]) != size:
                raise ConfigError(
                    f"calibration batches must share one input size ({size}); got {list(b.shape[-2:])}."
                )
            qbb.capture(b)
    for u in done:
        _set(model, u, convert_fx(model.get_submodule(u)))  # type: ignore[arg-type]
    n_cal = sum(len(b) for b in batches)
    return done, n_cal, size, notes
