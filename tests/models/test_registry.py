"""The registry: a name prefix picks a family's loader, which gets the options as one LoadOptions."""

from __future__ import annotations

import pytest

from diag.errors import BackboneError
from diag.models import FAMILIES, BlockLayout, LoadOptions, load


def test_the_two_families_are_registered() -> None:
    assert set(FAMILIES) == {"timm", "hf"}


def test_a_new_family_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch, tiny_image_backbone) -> None:
    seen: dict[str, object] = {}

    def loader(name: str, ref: str, options: LoadOptions):
        seen.update(name=name, ref=ref, options=options)
        return tiny_image_backbone

    monkeypatch.setitem(FAMILIES, "toy", loader)
    assert load(" toy:abc ", pretrained=False, seed=3, image_size=32) is tiny_image_backbone
    assert seen == {"name": "toy:abc", "ref": "abc", "options": LoadOptions(False, 3, 32, None)}


def test_an_unregistered_prefix_is_an_unknown_backbone() -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'toy:abc'"):
        load("toy:abc")
    with pytest.raises(BackboneError, match="unknown backbone 'timm:'"):
        load("timm:")


def test_timm_loader_options_reach_the_backbone() -> None:
    bb = FAMILIES["timm"]("timm:test_efficientnet", "test_efficientnet", LoadOptions(False, 1, 32, None))
    assert bb.preprocessing["input_size"] == [3, 32, 32] and bb.seed == 1 and not bb.pretrained
    assert isinstance(bb.block_layout(bb.model), BlockLayout)


def test_offline_advice_for_a_hub_id_does_not_recommend_the_random_init_twin(monkeypatch) -> None:
    """Offline, a hub id's random-init twin fails the same way (its config.json is on the hub too)."""
    import pytest

    from diag.errors import BackboneError
    from diag.models import load

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for pretrained in (True, False):
        with pytest.raises(BackboneError) as info:
            load("hf:nobody/not-a-model", pretrained=pretrained)
        message = str(info.value)
        assert "--random-init" not in message and "needs its config.json from the network" in message
        assert "minilm" in message and "hf:/path/to/model" in message
