"""diag.models.weights: user weight files (NAME@PATH) are read without running code from them, and a
refused file gets a one-line message of our own (never torch's advice to load it unsafely)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from diag.errors import BackboneError
from diag.models.weights import load_weights_only, read_weights


class Payload:
    """Unpickling it calls ``open(marker, "w")``: the file appears only if the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": 1, "model": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    return path


def test_a_malicious_pickle_is_refused_unread_with_our_message(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = malicious_checkpoint(tmp_path / "evil.pt", marker)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warnings do not leak either
        with pytest.raises(BackboneError) as info:
            read_weights("timm:test_efficientnet@evil.pt", path)
    message = str(info.value)
    assert not marker.exists()
    assert "\n" not in message and str(path) in message and "refused unread" in message
    assert ".safetensors" in message and "weights_only=True" in message
    assert "weights_only=False" not in message and "Re-running" not in message


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"not a checkpoint at all\n", "cannot be read as a torch file"),
        (b"PK\x03\x04broken zip", "RuntimeError"),
    ],
)
def test_an_unreadable_file_names_the_file_and_what_is_accepted(
    tmp_path: Path, content: bytes, why: str
) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=why) as info:
        load_weights_only(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "weights_only=False" not in message and "\n" not in message


def test_a_plain_state_dict_still_loads(tmp_path: Path) -> None:
    torch.save({"module.w": torch.ones(3)}, tmp_path / "sd.pt")
    body, head = read_weights("x", tmp_path / "sd.pt")
    assert list(body) == ["w"] and torch.equal(body["w"], torch.ones(3)) and head == {}
