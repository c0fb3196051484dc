"""hyperParameters.precision and dropout: what the trainer decides on this (CPU) machine,
and the knobs reaching the model config."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import BertConfig, GPT2Config, LlamaConfig

from trainer.model import apply_dropout
from trainer.precision import COMPILE_VARIABLE, Precision, attention_implementation, resolve

CPU = torch.device("cpu")


def test_auto_on_a_cpu_is_plain_fp32() -> None:
    choice = resolve("auto", CPU)
    assert choice.name == "fp32" and choice.autocast_dtype is None
    assert isinstance(choice.autocast(), contextlib.nullcontext)
    assert choice.model_load_arguments() == {}


def test_fp32_is_plain_fp32() -> None:
    assert resolve("fp32", CPU).autocast_dtype is None


def test_bf16_on_a_cpu_runs_under_cpu_autocast() -> None:
    choice = resolve("bf16", CPU)
    assert choice.name == "bf16"
    layer = torch.nn.Linear(4, 4)
    with choice.autocast():
        output = layer(torch.ones(1, 4))
    assert output.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32, "weights stay float32"


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        resolve("fp8", CPU)


def test_compile_is_off_unless_the_operator_turns_it_on() -> None:
    assert not resolve("auto", CPU, {}).compile
    assert resolve("auto", CPU, {COMPILE_VARIABLE: "1"}).compile
    # On a CPU it stays a no-op: the model is left as it is.
    model = torch.nn.Linear(2, 2)
    Precision(CPU, None, compile=True).prepare(model)
    assert type(model.forward).__name__ == "method"


@pytest.mark.parametrize(
    ("config", "fields"),
    [
        (LlamaConfig(), ["attention_dropout"]),
        (
            BertConfig(),
            ["attention_probs_dropout_prob", "hidden_dropout_prob", "classifier_dropout"],
        ),
        (GPT2Config(), ["attn_pdrop", "resid_pdrop", "embd_pdrop", "summary_first_dropout"]),
    ],
    ids=["llama", "bert", "gpt2"],
)
def test_dropout_is_set_on_every_dropout_field_of_the_config(
    config: object, fields: list[str]
) -> None:
    assert sorted(apply_dropout(config, 0.25)) == sorted(fields)
    assert all(getattr(config, name) == 0.25 for name in fields)


def test_unset_dropout_keeps_the_model_values() -> None:
    config = BertConfig()
    assert apply_dropout(config, None) == []
    assert config.hidden_dropout_prob == 0.1


def test_a_config_without_dropout_fields_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    class Bare:
        model_type = "bare"

    assert apply_dropout(Bare(), 0.2) == []
    assert "not applied" in caplog.text


FLASH_READY = {
    "bf16": True,
    "flash_attention_installed": True,
    "compute_capability": (9, 0),
    "packed_causal_lm": True,
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, "flash_attention_2"),  # an H100, flash-attn installed, a packed Llama/Qwen2
        ({"compute_capability": (8, 0)}, "flash_attention_2"),  # A100
        ({"compute_capability": (7, 5)}, "sdpa"),  # T4: no bf16 flash kernels
        ({"flash_attention_installed": False}, "sdpa"),  # nothing is downloaded
        ({"bf16": False}, "sdpa"),  # fp32: the kernel takes 16-bit inputs only
        ({"packed_causal_lm": False}, "sdpa"),  # classification, or an unknown family
    ],
)
def test_packed_rows_on_cuda_use_the_varlen_kernel_when_it_can_run(
    change: dict[str, object], expected: str
) -> None:
    assert attention_implementation(**(FLASH_READY | change)) == expected  # type: ignore[arg-type]
