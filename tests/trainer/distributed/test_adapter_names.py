"""A LoRA checkpoint resumed under FSDP: its adapter file, named as peft saves it
(without the adapter name), is mapped back to the model's own state-dict names, which
torch's loading into sharded parameters matches on (trainer/lora.py
`model_state_from_adapter`). In process, on a causal LM and on a classifier whose new
head peft keeps as `modules_to_save`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from jobstore.documents import HyperParameters
from service.server.demo import build_demo_model
from tests.conftest import minilm_model_dir
from trainer import lora
from trainer.model import load_model

CPU = torch.device("cpu")


def lora_model(directory: Path, labels: list[str] | None = None) -> Any:
    model, _ = load_model(directory, "s3://demo/m/", CPU, labels=labels)
    return lora.wrap(
        model,
        HyperParameters(method="LORA", loraRank=4),
        classification=labels is not None,
        base_model_uri="s3://demo/m/",
    )


def assert_maps_back(model: Any, saved: dict[str, torch.Tensor]) -> None:
    own = lora.model_state_from_adapter(model, saved)
    state = model.state_dict()
    assert len(own) == len(saved) and set(own) <= set(state)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(own) == trainable  # every trained weight, and nothing frozen
    for name, tensor in own.items():
        assert torch.equal(tensor, state[name]), name


def test_a_causal_lms_saved_adapter_maps_back_to_the_models_names(tmp_path: Path) -> None:
    build_demo_model(tmp_path / "base")
    model = lora_model(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")  # as a checkpoint holds it
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert not any(".default." in name for name in saved)  # peft drops the adapter name
    assert_maps_back(model, saved)


def test_a_classifiers_saved_adapter_and_head_map_back_to_the_models_names(
    tmp_path: Path,
) -> None:
    model = lora_model(minilm_model_dir(), labels=["negative", "positive"])
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("classifier" in name for name in saved)
    assert_maps_back(model, saved)


def test_a_name_the_model_lacks_is_refused(tmp_path: Path) -> None:
    build_demo_model(tmp_path / "base")
    model = lora_model(tmp_path / "base")
    with pytest.raises(ValueError, match="weights this model does not"):
        lora.model_state_from_adapter(model, {"base_model.model.nowhere.weight": torch.ones(1)})
