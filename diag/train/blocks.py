"""Blocks: the ordered parameter groups that ``freeze=K`` counts, and turning a freeze spec into K.

A backbone is cut into an ordered list of **blocks** (parameter groups), input side first, each named
after the probe point at its output (the names :mod:`diag.engine.embeddings` uses), so "freeze up to
``blocks.4``" means the same thing to the recommender and to the engine:

- timm image models: ``stem`` (everything before the first stage: ``conv_stem`` + ``bn1``), one block per
  stage (``blocks.0`` ... ``blocks.6`` for EfficientNet-Lite), then ``pooled`` (everything between the
  last stage and the classifier: ``conv_head`` + ``bn2``). EfficientNet-Lite0 has 9 blocks.
- Hugging Face encoders: ``embeddings``, ``layer.0`` ... ``layer.{L-1}`` (MiniLM: 7 blocks). The
  pooler is not used (the head reads the masked mean of the last layer, the ``pooled`` probe).

``freeze=K`` freezes the first K blocks: ``0`` tunes everything, ``n_blocks`` (also ``"all"`` or
``"linear"``) trains only the head (a linear probe). A block name freezes every block up to and
including it: ``freeze="blocks.4"`` is K = 6 for EfficientNet-Lite (``stem``, ``blocks.0`` ... ``blocks.4``).
Frozen blocks get no gradient and stay in eval mode during training, so their BatchNorm statistics
and dropout are those of the pretrained network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from diag.errors import ConfigError
from diag.models import Backbone

__all__ = ["FreezeUnit", "freeze_units", "n_blocks", "resolve_freeze", "units_of_model"]

_FREEZE_WORDS = {"none": "0", "all": "all", "linear": "all"}


@dataclass(frozen=True)
class FreezeUnit:
    """One block of the freeze order: the parameters (and modules) that produce the probe ``name``.

    Attributes
    ----------
    name : str
        The probe point at the block's output (``stem``, ``blocks.3``, ``pooled``, ``layer.2``, ...).
    index : int
        Position from the input side, 0-based; ``freeze=K`` freezes the blocks with index < K.
    params : tuple of str
        Parameter names inside ``backbone.model``.
    modules : tuple of str
        Module names inside ``backbone.model`` (put in eval mode while the block is frozen).
    n_params : int
        Number of scalar parameters.
    """

    name: str
    index: int
    params: tuple[str, ...]
    modules: tuple[str, ...]
    n_params: int


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _group(
    model: nn.Module, named: list[tuple[str, str]], *, exclude: Sequence[str], before: str, after: str | None
) -> list[FreezeUnit]:
    """Assign every parameter and module to a block: inside one of ``named`` ((prefix, unit name)), else
    ``before`` until the first named block is reached, else ``after`` (None: left out, never trained)."""
    order = [u for _, u in named]
    units: dict[str, tuple[list[str], list[str]]] = {
        u: ([], []) for u in [before, *order, *([after] if after else [])]
    }

    def owner(name: str, seen: bool) -> str | None:
        if any(_inside(name, x) for x in exclude):
            return None
        for prefix, unit in named:
            if _inside(name, prefix):
                return unit
        return after if seen else before

    seen = False
    for pname, _ in model.named_parameters():
        seen = seen or any(_inside(pname, p) for p, _ in named)
        u = owner(pname, seen)
        if u is not None:
            units[u][0].append(pname)
    seen = False
    prefixes = [p for p, _ in named]
    for mname, _ in model.named_modules():
        if not mname or any(p.startswith(mname + ".") for p in prefixes):
            continue  # the root and containers of several blocks
        seen = seen or any(_inside(mname, p) for p in prefixes)
        u = owner(mname, seen)
        if u is not None:
            units[u][1].append(mname)
    params = dict(model.named_parameters())
    out: list[FreezeUnit] = []
    for name, (ps, ms) in units.items():
        if ps:  # a block without parameters (e.g. a bare activation) has nothing to freeze
            n = sum(params[p].numel() for p in ps)
            out.append(FreezeUnit(name, len(out), tuple(ps), tuple(ms), int(n)))
    return out


def units_of_model(model: nn.Module, backbone: Backbone) -> list[FreezeUnit]:
    """The blocks of ``model``: ``backbone.model`` itself or a copy of it (a fine-tuning body, whose
    source classifier is removed), cut where :meth:`Backbone.block_layout` says."""
    layout = backbone.block_layout(model)
    return _group(model, layout.modules, exclude=layout.exclude, before=layout.before, after=layout.after)


def freeze_units(backbone: Backbone) -> list[FreezeUnit]:
    """The backbone's blocks in freeze order (input side first); see the module docstring.

    The source-task classifier (ImageNet head) belongs to no block: fine-tuning replaces it.
    """
    return units_of_model(backbone.model, backbone)


def n_blocks(backbone: Backbone) -> int:
    """The number of blocks: ``freeze=n_blocks(backbone)`` is a linear probe."""
    return len(freeze_units(backbone))


def resolve_freeze(freeze: int | str, units: Sequence[FreezeUnit]) -> int:
    """Turn a freeze spec (K, a block name, ``all``/``linear``/``none``) into K, the blocks frozen.

    Raises
    ------
    ConfigError
        K larger than the number of blocks, or an unknown block name (the message lists them).
    """
    n = len(units)
    names = [u.name for u in units]
    listing = f"the {n} blocks are {', '.join(names)}"
    if isinstance(freeze, str):
        s = _FREEZE_WORDS.get(freeze.strip().lower(), freeze.strip())
        if s == "all":
            return n
        if s.isdigit():
            freeze = int(s)
        elif s in names:
            return names.index(s) + 1
        else:
            raise ConfigError(
                f"freeze must be an integer 0..{n}, a block name, 'all' or 'linear'; got {s!r} ({listing})."
            )
    if not 0 <= freeze <= n:
        raise ConfigError(
            f"freeze must be between 0 and {n} (n_blocks; {n} = linear probe); got {freeze} ({listing})."
        )
    return int(freeze)
