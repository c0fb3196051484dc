"""Packing without cross-contamination: a packed batch gives each example exactly the loss
and gradient it has when run alone, on every architecture packing allows; an
architecture it cannot pack safely gets padded batches instead."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from trainer.data import IGNORE_INDEX, TokenizedExample, collate
from trainer.evaluation import ValidationLoss, validation_loss
from trainer.loss import WindowLoss, backward_window, token_loss_sum
from trainer.packing import PACKABLE_MODEL_TYPES, PackedBatch, Packer

VOCAB = 96
PAD = 0


def tiny_model(model_type: str, attention: str = "sdpa") -> Any:
    """A randomly initialised causal LM of `model_type`, two layers, float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes: dict[str, Any] = {"vocab_size": VOCAB}
    if model_type == "gpt2":
        sizes |= {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}
    elif model_type == "bloom":
        sizes |= {"hidden_size": 32, "n_layer": 2, "n_head": 4}
    else:
        sizes |= {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        }
    config = AutoConfig.for_model(model_type, **sizes)
    config.head_dim = 8 if model_type != "gpt2" and model_type != "bloom" else None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation=attention, dtype=torch.float32
    )
    return model.eval()  # no dropout: the two runs must see the same function


def examples(lengths: list[int], seed: int = 1) -> list[TokenizedExample]:
    """Prompt/completion examples: loss on the second half of each (at least one token)."""
    generator = torch.Generator().manual_seed(seed)
    made = []
    for length in lengths:
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        prompt = length // 2
        made.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return made


LENGTHS = [7, 19, 3, 12, 30, 2, 9]


def per_example_losses(model: Any, batch: PackedBatch) -> dict[tuple[int, ...], float]:
    """Summed next-token loss of each example of a packed batch, keyed by its token ids."""
    logits = model(**batch.model_inputs()).logits.float()
    token_losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(batch.labels.size(0), -1)
    losses = {}
    for row in range(batch.input_ids.size(0)):
        real = batch.attention_mask[row].bool()
        for segment in torch.unique(batch.segment_ids[row][real]).tolist():
            in_segment = (batch.segment_ids[row] == segment) & real
            tokens = tuple(batch.input_ids[row][in_segment].tolist())
            # The loss at shifted position t is the prediction of token t+1.
            losses[tokens] = float(token_losses[row][in_segment[1:]].sum())
    return losses


def alone_losses(model: Any, batch_examples: list[TokenizedExample]) -> list[float]:
    return [float(token_loss_sum(model, collate([e], PAD))) for e in batch_examples]


def alone_correct(model: Any, batch_examples: list[TokenizedExample]) -> int:
    """Target tokens predicted right (the most likely next token is the label), counted
    example by example with no batching at all."""
    correct = 0
    for example in batch_examples:
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
        for position, label in enumerate(example.labels[1:]):
            if label != IGNORE_INDEX and int(logits[position].argmax()) == label:
                correct += 1
    return correct


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", sorted(PACKABLE_MODEL_TYPES))
def test_per_example_losses_of_a_packed_batch_equal_those_run_one_at_a_time(
    model_type: str, attention: str
) -> None:
    model = tiny_model(model_type, attention)
    batch_examples = examples(LENGTHS)
    packer = Packer.for_model(model, row_length=32, pad_id=PAD)
    assert packer is not None
    packed = packer.pack_examples(batch_examples)
    assert packed.input_ids.size(0) < len(batch_examples)  # really packed: rows share examples

    with torch.no_grad():
        packed_losses = per_example_losses(model, packed)
        alone = alone_losses(model, batch_examples)
        total = float(token_loss_sum(model, packed))

    assert packed_losses == pytest.approx(
        {tuple(e.input_ids): loss for e, loss in zip(batch_examples, alone, strict=True)},
        rel=1e-4,
        abs=1e-4,
    )
    assert total == pytest.approx(sum(alone), rel=1e-5)


def test_packing_is_not_a_no_op_for_the_equivalence_test() -> None:
    """Without the first-token label fix and the mask, the loss differs: the equivalence
    test above would catch cross-contamination."""
    model = tiny_model("llama")
    batch_examples = examples(LENGTHS)
    packer = Packer(row_length=1000, pad_id=PAD, attention="sdpa")
    packed = packer.pack_examples(batch_examples)
    with torch.no_grad():
        alone = sum(alone_losses(model, batch_examples))
        # The same packed row under a plain causal mask: examples see each other.
        contaminated = model(input_ids=packed.input_ids, position_ids=packed.position_ids).logits
        loss = F.cross_entropy(
            contaminated[0, :-1].float(),
            packed.labels[0, 1:],
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
    assert abs(float(loss) - alone) > 1e-2


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_gradients_of_a_packed_window_equal_those_of_padded_batches(model_type: str) -> None:
    model = tiny_model(model_type)
    window_examples = [examples(LENGTHS, seed=2), examples([5, 25, 11], seed=3)]
    packer = Packer(row_length=32, pad_id=PAD, attention="sdpa")

    def gradients(batches: list[Any]) -> tuple[WindowLoss, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = backward_window(model, batches, torch.device("cpu"), contextlib.nullcontext)
        return loss, [p.grad.clone() for p in model.parameters()]

    padded_loss, padded = gradients([collate(part, PAD) for part in window_examples])
    packed_loss, packed = gradients([packer.pack_examples(part) for part in window_examples])
    assert packed_loss.loss == pytest.approx(padded_loss.loss, rel=1e-5)
    with torch.no_grad():
        alone = sum(alone_correct(model, part) for part in window_examples)
    assert packed_loss.correct_tokens == padded_loss.correct_tokens == alone
    for padded_grad, packed_grad in zip(padded, packed, strict=True):
        torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_packed_evaluation_gives_the_padded_validation_loss_in_fewer_rows(
    model_type: str,
) -> None:
    """The validation loss is the mean per target token over the whole set, however the
    batches are laid out; packing must only change how many rows are computed."""
    model = tiny_model(model_type)
    # Uneven lengths and a last batch shorter than the rest (13 examples, batches of 4).
    validation = examples([7, 19, 3, 12, 30, 2, 9, 25, 4, 16, 6, 28, 11], seed=4)
    packer = Packer.for_model(model, row_length=32, pad_id=PAD)
    assert packer is not None

    def evaluate(with_packer: Packer | None) -> ValidationLoss:
        return validation_loss(
            model,
            validation,
            batch_size=4,
            pad_id=PAD,
            packer=with_packer,
            device=torch.device("cpu"),
            autocast=contextlib.nullcontext,
        )

    padded, packed = evaluate(None), evaluate(packer)
    assert not padded.packed and packed.packed
    assert padded.rows == len(validation)
    assert packed.rows < padded.rows  # really packed
    assert (
        packed.target_tokens
        == padded.target_tokens
        == sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in validation)
    )
    assert packed.mean == pytest.approx(padded.mean, rel=1e-5)
    with torch.no_grad():  # and both are the mean over the examples run one at a time
        alone = sum(alone_losses(model, validation))
        right = alone_correct(model, validation)
    assert padded.mean == pytest.approx(alone / padded.target_tokens, rel=1e-5)
    # Token accuracy, the same way: the share of all target tokens predicted right.
    assert packed.correct_tokens == padded.correct_tokens == right
    assert padded.token_accuracy == right / padded.target_tokens


def test_position_ids_restart_at_zero_for_every_example() -> None:
    packer = Packer(row_length=32, pad_id=PAD, attention="sdpa")
    packed = packer.pack_examples(examples(LENGTHS))
    for row in range(packed.input_ids.size(0)):
        real = packed.attention_mask[row].bool()
        segments = packed.segment_ids[row][real]
        positions = packed.position_ids[row][real]
        for segment in torch.unique(segments).tolist():
            in_segment = positions[segments == segment]
            assert in_segment.tolist() == list(range(len(in_segment)))


def test_a_packed_batch_keeps_every_token_and_target_and_no_row_is_over_the_cap() -> None:
    batch_examples = examples(LENGTHS)
    packed = Packer(row_length=32, pad_id=PAD, attention="sdpa").pack_examples(batch_examples)
    padded = collate(batch_examples, PAD)
    assert int(packed.attention_mask.sum()) == sum(LENGTHS)  # same real tokens
    assert packed.target_tokens == padded.target_tokens  # same loss normalisation
    assert packed.input_ids.size(1) <= 2 * 32  # rows may reach twice the sequence length
    assert packed.input_ids.numel() < padded.input_ids.numel()  # less padding
    # Padding only at the end of a row.
    for mask in packed.attention_mask:
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()


def test_block_diagonal_mask_never_lets_one_example_see_another() -> None:
    packed = Packer(row_length=1000, pad_id=PAD, attention="sdpa").pack_examples(
        examples([3, 2, 4])
    )
    mask = packed.block_diagonal_mask()[0, 0].int()
    expected = torch.block_diag(
        torch.ones(3, 3).tril(), torch.ones(2, 2).tril(), torch.ones(4, 4).tril()
    ).int()
    assert torch.equal(mask, expected)


def test_varlen_attention_gets_one_row_and_no_mask() -> None:
    packer = Packer(row_length=8, pad_id=PAD, attention="flash_attention_2")
    packed = packer.pack_examples(examples(LENGTHS))
    assert packed.input_ids.shape == (1, sum(LENGTHS))  # no padding at all
    inputs = packed.model_inputs()
    assert "attention_mask" not in inputs
    assert inputs["position_ids"] is packed.position_ids


def test_a_padded_batch_packs_to_the_same_examples_as_collating_them() -> None:
    batch_examples = examples(LENGTHS)
    packer = Packer(row_length=32, pad_id=PAD, attention="sdpa")
    from_padded = packer.pack_batch(collate(batch_examples, PAD))
    direct = packer.pack_examples(batch_examples)
    assert isinstance(from_padded, PackedBatch)
    for name in ("input_ids", "labels", "attention_mask", "position_ids", "segment_ids"):
        assert torch.equal(getattr(from_padded, name), getattr(direct, name)), name


def test_classification_batches_are_not_packed() -> None:
    batch = collate([TokenizedExample([5, 6, 7], [1], classification=True)], PAD)
    assert Packer(row_length=32, pad_id=PAD, attention="sdpa").pack_batch(batch) is batch


def test_an_architecture_that_cannot_pack_safely_falls_back_to_padding_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Bloom's ALiBi biases come from the 2D padding mask: packed, positions would not
    # restart, so packing is refused.
    model = tiny_model("bloom", "eager")
    with caplog.at_level(logging.WARNING, logger="trainer.packing"):
        assert Packer.for_model(model, row_length=32, pad_id=PAD) is None
    assert "packing is off" in caplog.text and "bloom" in caplog.text


def test_a_sliding_window_shorter_than_a_row_refuses_packing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = tiny_model("mistral")
    model.config.sliding_window = 16
    with caplog.at_level(logging.WARNING, logger="trainer.packing"):
        assert Packer.for_model(model, row_length=32, pad_id=PAD) is None
    assert "sliding attention window" in caplog.text
    assert Packer.for_model(model, row_length=16, pad_id=PAD) is not None


def test_rows_are_balanced_rather_than_padded_to_the_sequence_length() -> None:
    # 2224 tokens, the longest example near the sequence length: three rows of 1000
    # would be a quarter padding; two rows of 1200 (1000 + 24 | 500 + 400 + 300) are not.
    lengths = [1000, 500, 400, 300, 24]
    packer = Packer(row_length=1024, pad_id=PAD, attention="sdpa")
    rows = packer.layout(lengths)
    widths = [sum(lengths[i] for i in row) for row in rows]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert len(rows) == 2 and max(widths) == 1200


def test_a_costly_attention_prefers_more_narrower_rows() -> None:
    lengths = [100] * 8
    cheap = Packer(row_length=1024, pad_id=PAD, attention="sdpa", attention_cost=0.0)
    costly = Packer(row_length=1024, pad_id=PAD, attention="sdpa", attention_cost=1.0)
    assert len(cheap.layout(lengths)) == 1  # one 800-token row: no padding at all
    assert len(costly.layout(lengths)) == 8  # each example alone: no attention wasted
