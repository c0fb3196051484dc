"""trainer/lora.py in process: target modules per architecture, the helpful error for a
module the model lacks, and LoRA for CLASSIFICATION on the real pretrained MiniLM (the
adapters and the new head train; the base weights do not move)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from jobstore.documents import HyperParameters
from service.server.demo import build_demo_model
from tests.conftest import minilm_model_dir
from trainer import lora
from trainer.errors import ModelLoadError
from trainer.model import load_model
from trainer.optim import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    build_demo_model(directory)
    return directory


def _lora(**values: Any) -> HyperParameters:
    return HyperParameters(method="LORA", **values)


def test_llama_defaults_to_the_attention_projections(llama_dir: Path) -> None:
    model, _ = load_model(llama_dir, "s3://demo/models/tiny-llama/", CPU)
    targets, why = lora.target_modules(model, None)
    assert targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert "llama" in why


def test_unknown_architecture_falls_back_to_every_linear_but_the_head(llama_dir: Path) -> None:
    model, _ = load_model(llama_dir, "s3://demo/models/tiny-llama/", CPU)
    model.config.model_type = "unheard-of"
    targets, why = lora.target_modules(model, None)
    assert "lm_head" not in targets
    assert (
        "model.layers.0.mlp.down_proj" in targets and "model.layers.1.self_attn.q_proj" in targets
    )
    assert "no default" in why


def test_a_missing_target_module_names_the_layers_that_exist(llama_dir: Path) -> None:
    model, _ = load_model(llama_dir, "s3://demo/models/tiny-llama/", CPU)
    with pytest.raises(ModelLoadError) as caught:
        lora.wrap(
            model,
            _lora(loraTargetModules=["query", "self_attn"]),
            classification=False,
            base_model_uri="s3://m/",
        )
    message = caught.value.message
    assert "query: no such module" in message
    assert "self_attn: a block of layers, not a layer" in message
    assert "k_proj, lm_head, o_proj, q_proj" in message


def test_only_adapters_train_and_the_base_stays_frozen(llama_dir: Path) -> None:
    model, _ = load_model(llama_dir, "s3://demo/models/tiny-llama/", CPU)
    wrapped = lora.wrap(model, _lora(loraRank=4), classification=False, base_model_uri="s3://m/")
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    state = lora.trainable_state_dict(wrapped)
    assert len(state) == len(trainable)
    assert wrapped.peft_config["default"].base_model_name_or_path == "s3://m/"


def test_lora_classification_trains_adapters_and_head_on_minilm(tmp_path: Path) -> None:
    labels = ["negative", "positive"]
    model, tokenizer = load_model(
        minilm_model_dir(), "s3://demo/models/minilm/", CPU, labels=labels
    )
    model = lora.wrap(model, _lora(loraRank=8), classification=True, base_model_uri="s3://m/")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in name for name in trainable), "the new head trains"
    assert any("query.lora_A" in name for name in trainable)
    assert all("lora_" in name or "classifier" in name for name in trainable), trainable

    frozen_before = {
        name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad
    }
    head_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
    texts = ["a wonderful, moving film", "dull and far too long", "great fun", "a mess"]
    targets = torch.tensor([1, 0, 1, 0])
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    optimizer = build_optimizer(model, 1e-2, 0.0)
    model.train()
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    for name, before in frozen_before.items():
        assert torch.equal(dict(model.named_parameters())[name], before), f"{name} moved"
    moved = [
        n
        for n, before in head_before.items()
        if not torch.equal(before, dict(model.named_parameters())[n])
    ]
    assert any("classifier" in n for n in moved) and any("lora_B" in n for n in moved)

    # Saved as the recipe saves it, the adapter reloads onto a fresh base with its head.
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = model(**inputs).logits
    base, _ = load_model(minilm_model_dir(), "s3://demo/models/minilm/", CPU, labels=labels)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected)
