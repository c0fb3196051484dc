"""`python -m trainer.dry_run --report PATH`: a job's VALIDATING stage without a job.

The API server runs it as a short-lived subprocess for `POST /v1/jobs` with
`validateOnly: true` (service/control/dry_run.py): the job's spec (never stored: its id is
a placeholder) on stdin, the store's endpoint and the tenant's credentials in the
AWS_* variables, a scratch working directory the server deletes afterwards. It runs the
preflight's own code (trainer/preflight.py) on the data and the base model's tokenizer,
exactly as a job's VALIDATING stage does, and writes a `JobValidationReport`
(jobstore/documents.py) as JSON to PATH. It writes nothing to the store: no job
documents, no tokenized-data cache entry (nor does it read one).

What it does differently from a job: it collects problems up to MAX_REPORTED_ERRORS
instead of 20; it reports a model problem beside the data's instead of after them; it
downloads the base model's files but not its weights (the tokenizer and config.json
are all the checks read; the parameters, for the time estimate, come from the weights'
headers). Like a job, it counts tokens (phase 2) only once every record is well-formed.

Exit codes: 0 the report is written (valid or not); 3 torch or transformers cannot be
imported here (the server answers that dry runs need the trainer's packages); anything
else a crash (its message on stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jobstore.documents import (
    JobSpec,
    JobValidationReport,
    SplitValidation,
    TrainingEstimate,
)
from jobstore.errors import StoreUnavailable
from jobstore.storage import ObjectStore, StorageError
from jobstore.structured_logging import configure_logging

log = logging.getLogger("trainer.dry_run")

MISSING_PACKAGES = 3
MAX_REPORTED_ERRORS = 1000
# Compute per training token per parameter: forward (2) and backward (4) for full
# fine-tuning; LoRA's frozen base needs no weight gradients (forward 2, backward 2).
FLOPS_PER_TOKEN_PARAMETER = {"FULL": 6, "LORA": 4}


@dataclass(frozen=True)
class Throughput:
    """The operator's assumed sustained throughput of one rank (FLOP/s)."""

    cpu: float
    gpu: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.dry_run",
        description="Check a job's data and base model as VALIDATING would; spec on stdin.",
    )
    parser.add_argument("--report", required=True, type=Path, help="where to write the JSON")
    parser.add_argument("--cpu-flops", type=float, default=5e10)
    parser.add_argument("--gpu-flops", type=float, default=1e14)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(os.environ.get("TUNEFORGE_LOG_FORMAT") or "console")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        print(f"dry runs need the trainer's packages: {error}", file=sys.stderr)
        return MISSING_PACKAGES
    spec = JobSpec.model_validate_json(sys.stdin.buffer.read())
    report = dry_run(
        spec,
        # Someone waits on the answer: a store that is down is reported, not waited out.
        storage=ObjectStore.from_environment(outage_patience_seconds=0),
        workdir=Path.cwd(),
        throughput=Throughput(args.cpu_flops, args.gpu_flops),
    )
    args.report.write_text(report.model_dump_json(), encoding="utf-8")
    log.info("dry run: valid=%s, %d problem(s)", report.valid, report.errorCount)
    return 0


def dry_run(
    spec: JobSpec, *, storage: ObjectStore, workdir: Path, throughput: Throughput
) -> JobValidationReport:
    """The report of what the job's VALIDATING stage would find."""
    from trainer import data, preflight, tokenization
    from trainer.errors import BadInput
    from trainer.model import check_model_directory, download_model_metadata

    hp = spec.hyperParameters
    errors = data.ValidationErrors(limit=MAX_REPORTED_ERRORS)
    others: list[str] = []  # problems that name no line: the model's, the store's
    model_dir = workdir / "base-model"
    parameters: int | None = None
    try:
        names, parameters = download_model_metadata(storage, spec.baseModelIdentifier, model_dir)
        check_model_directory(model_dir, spec.baseModelIdentifier, names=names)
    except BadInput as error:
        others.append(error.message)
    except (StorageError, StoreUnavailable) as error:
        others.append(f"object storage error: {error.message}")

    checked: preflight.CheckedRecords | None = None
    try:
        checked, _ = preflight.read_records(
            spec, storage=storage, directory=workdir / "data", errors=errors
        )
    except (StorageError, StoreUnavailable) as error:
        others.append(f"object storage error: {error.message}")

    max_length = hp.maxSequenceLength
    if model_dir.joinpath("config.json").is_file():
        max_length = preflight.effective_max_length(model_dir, hp.maxSequenceLength)
    report = JobValidationReport(
        valid=False,
        customizationType=spec.customizationType,
        maxSequenceLength=max_length,
    )
    splits: dict[str, preflight.SplitTokens] = {}
    tokenized = None
    if checked is not None and not errors.total and not others:
        try:
            tokenizer = preflight.load_tokenizer(model_dir, spec.baseModelIdentifier)
            if tokenizer.eos_token_id is None and spec.customizationType != data.CLASSIFICATION:
                raise BadInput(
                    f"base model {spec.baseModelIdentifier}: the tokenizer has no "
                    "end-of-sequence token"
                )
            tokenized = preflight.tokenize_checked(
                spec,
                checked,
                tokenizer=tokenization.fast_batch_tokenizer(tokenizer),
                max_length=max_length,
                directory=workdir / "tokenized",
                errors=errors,
                splits=splits,
            )
        except BadInput as error:
            if not errors.total:  # not one of the lines already collected
                others.append(error.message)

    report.errors = [*errors.shown, *others][: MAX_REPORTED_ERRORS + len(others)]
    report.errorCount = errors.total + len(others)
    if checked is not None:
        for one in checked.files:
            split = splits.get(one.file.split, preflight.SplitTokens())
            lengths = preflight.percentiles(list(split.lengths))
            counted = tokenized.meta.counts[one.file.split] if tokenized is not None else None
            setattr(
                report,
                one.file.split,
                SplitValidation(
                    s3Uri=one.file.uri,
                    records=one.records,
                    examples=counted[0] if counted else None,
                    tokens=counted[1] if counted else None,
                    tokenLengths=lengths,
                    overMaxSequenceLength=split.truncated,
                    overMaxSequenceLengthLines=split.truncated_named[
                        : preflight.LINES_NAMED_IN_A_WARNING
                    ],
                ),
            )
    if tokenized is None:
        return report

    meta = tokenized.meta
    report.valid = report.errorCount == 0
    report.warnings = list(meta.warnings)
    report.labels = meta.labels
    report.labelDistribution = dict(meta.summary.labelDistribution)
    ranks = spec.resources.nodes * max(spec.resources.gpus, 1)
    examples, tokens = meta.counts["training"]
    if spec.customizationType == data.PREFERENCE:
        examples //= 2  # a pair is one example of a batch (trainer/preference.py)
    report.stepsPerEpoch = data.steps_per_epoch(
        examples, hp.batchSize * ranks, hp.gradientAccumulationSteps
    )
    report.totalSteps = report.stepsPerEpoch * hp.epochCount
    report.trainingTokens = tokens * hp.epochCount
    if parameters:
        report.estimate = estimate(
            spec,
            parameters=parameters,
            training_tokens=report.trainingTokens,
            validation_tokens=meta.counts["validation"][1],
            total_steps=report.totalSteps,
            ranks=ranks,
            throughput=throughput,
        )
    return report


def estimate(
    spec: JobSpec,
    *,
    parameters: int,
    training_tokens: int,
    validation_tokens: int,
    total_steps: int,
    ranks: int,
    throughput: Throughput,
) -> TrainingEstimate:
    """Training time as compute over throughput: k x N x D for training (k = 6 full,
    4 LoRA), 2 x N for each validation token of each evaluation, and for a preference
    job 2 x N for each token of the reference pass. Nothing else is counted."""
    hp = spec.hyperParameters
    factor = FLOPS_PER_TOKEN_PARAMETER[hp.method]
    evaluations = 0
    if validation_tokens:
        evaluations = hp.epochCount
        if hp.evalIntervalSteps:
            evaluations += total_steps // hp.evalIntervalSteps
    flops = float(factor * parameters * training_tokens)
    flops += 2.0 * parameters * validation_tokens * evaluations
    reference = spec.customizationType == "PREFERENCE"
    if reference:
        flops += 2.0 * parameters * (training_tokens // hp.epochCount + validation_tokens)
    gpu = spec.resources.gpus >= 1
    per_device = throughput.gpu if gpu else throughput.cpu
    device: Literal["cpu", "gpu"] = "gpu" if gpu else "cpu"
    seconds = flops / (per_device * ranks)
    method = (
        "LoRA: no weight gradients for the frozen base"
        if hp.method == "LORA"
        else "full fine-tuning: forward and backward"
    )
    assumption = (
        f"{factor} x N x D FLOPs to train ({method}), "
        f"N = {parameters:,} parameters, D = {training_tokens:,} training tokens "
        f"({hp.epochCount} epochs); 2 x N FLOPs a token for {evaluations} evaluation(s) of "
        f"{validation_tokens:,} validation tokens"
        + ("; 2 x N a token for the reference pass (once)" if reference else "")
        + f"; at an assumed sustained {per_device:.3g} FLOP/s per {device} rank "
        f"(the operator's TUNEFORGE_DRY_RUN_{device.upper()}_FLOPS) on {ranks} rank(s), "
        "perfectly parallel. Not counted: attention's cost that grows with sequence "
        "length, model download and loading, checkpoints, start-up. A rough guide, not "
        "a promise: the job's progress.etaSeconds is measured."
    )
    return TrainingEstimate(
        seconds=float(f"{seconds:.3g}"),  # three figures: a rough guide
        flops=flops,
        parameters=parameters,
        device=device,
        devices=ranks,
        flopsPerSecondPerDevice=per_device,
        assumption=assumption,
    )


if __name__ == "__main__":
    raise SystemExit(main())
