"""FSDP shards any model block by block (trainer/distributed.py `wrap`): Llama, GPT-2,
BERT and a LoRA-wrapped Llama, over two real gloo ranks on the CPU.

Each rank reports, after wrapping: how many of the model's transformer layers are FSDP
units of their own (every one, or a forward would gather the whole model at once), and
the parameter elements it holds locally, measured, against the model's total (about
half on each of two ranks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing

from service.server.embedded_s3 import free_port

MODELS = ("llama", "gpt2", "bert", "llama-lora")
# Each model's repeated transformer layer.
LAYER_CLASSES = {"LlamaDecoderLayer", "GPT2Block", "BertLayer"}


def _build(kind: str) -> tuple[torch.nn.Module, int]:
    """A tiny random model of `kind` and the number of its transformer blocks."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    if kind.startswith("llama"):
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        model: torch.nn.Module = LlamaForCausalLM(config)
        if kind == "llama-lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        return model, 4
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=3, n_head=4)), 3
    bert = BertConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3)
    bert.num_attention_heads = 4
    return BertForSequenceClassification(bert), 3


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    from trainer.distributed import Distributed, transformer_blocks

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        report: dict[str, Any] = {}
        for kind in MODELS:
            model, layers = _build(kind)
            total = sum(p.numel() for p in model.parameters())
            blocks = transformer_blocks(model)
            layers_found = [m for m in model.modules() if type(m).__name__ in LAYER_CLASSES]
            wrapped = Distributed(rank, 2, rank).wrap(model, "FSDP", torch.device("cpu"))
            local = sum(p.to_local().numel() for p in wrapped.parameters())
            # fully_shard gives a module a class of its own (FSDPLlamaDecoderLayer).
            units = sum(isinstance(layer, FSDPModule) for layer in layers_found)
            report[kind] = {
                "layers": layers,
                "blocks": len(blocks),
                "units": units,
                "local": local,
                "total": total,
            }
        Path(out, f"rank-{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_every_block_is_its_own_fsdp_unit_and_each_rank_holds_half(tmp_path: Path) -> None:
    torch.multiprocessing.start_processes(
        _rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for kind in MODELS:
        for rank, report in enumerate(reports):
            found = report[kind]
            assert found["units"] == found["layers"] <= found["blocks"], (kind, rank, found)
            share = found["local"] / found["total"]
            assert 0.45 <= share <= 0.55, (kind, rank, share)
        # The two shards together are the whole model, nothing held twice.
        assert sum(report[kind]["local"] for report in reports) == reports[0][kind]["total"]
