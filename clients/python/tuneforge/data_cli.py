"""`tuneforge data ...` and `tuneforge models ...`: datasets and models between this
machine and the S3-compatible store, for people and scripts.

    tuneforge data upload FILE s3://bucket/key [--part-size MiB]
    tuneforge data validate FILE --type FINE_TUNING --base-model s3://demo/models/tiny-llama/ \\
        --via s3://bucket/scratch/ [--max-sequence-length N] [--keep]
    tuneforge models download JOB_ID DIR

Transfers talk to the store directly, with the caller's AWS credentials taken as the AWS
CLI takes them (tuneforge/transfers.py); they resume where an interrupted run stopped.
`models download` and `data validate` also call the service (`--endpoint` or `--rest`):
the first for the job's model location, the second for its dry run (validateOnly).
Progress bars go to stderr on a terminal; stdout gets one summary line (or the report).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from google.protobuf import json_format

from tuneforge import convert
from tuneforge.create_flags import CUSTOMIZATION_TYPES, FLAG_TYPES, UsageError, load_file
from tuneforge.display import print_json
from tuneforge.v1 import fine_tuning_pb2 as pb

EXIT_OK = 0
EXIT_INVALID_DATA = 5


class DataApi(Protocol):
    """What these commands need of a client (`Client` and `RestClient` both provide it)."""

    def create_job(self, request: pb.CreateJobRequest) -> pb.CreateJobResponse: ...
    def get_job(self, job_id: str) -> pb.Job: ...


def add_commands(
    groups: Any,  # argparse's private _SubParsersAction
    common: argparse.ArgumentParser,
) -> None:
    data = groups.add_parser("data", help="datasets: upload, validate (a dry run)")
    data_commands = data.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = groups.add_parser("models", help="fine-tuned models: download")
    model_commands = models.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        commands: Any, name: str, handler: Callable[..., int], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help, parents=[common], allow_abbrev=False
        )
        sub.set_defaults(handler=_reporting(handler))
        return sub

    upload = command(
        data_commands,
        "upload",
        cmd_upload,
        "upload a file to the object store (multipart, resumable: run it again to go on)",
    )
    upload.add_argument("file", help="the local file")
    upload.add_argument(
        "destination", help="s3://bucket/key (a key ending in '/' gets the file's name)"
    )
    _part_size(upload)

    validate = command(
        data_commands,
        "validate",
        cmd_validate,
        "a dry run on a local file: upload it to a scratch key, check it as a job's "
        "VALIDATING stage would, print the report (every problem with file:line)",
    )
    validate.add_argument("file", help="the local JSONL training file")
    validate.add_argument(
        "--type",
        dest="customization_type",
        metavar="TYPE",
        type=FLAG_TYPES["customization_type"],
        help=f"{', '.join(CUSTOMIZATION_TYPES)} (default FINE_TUNING)",
    )
    validate.add_argument("--base-model", metavar="URI", help="s3:// prefix of the base model")
    validate.add_argument(
        "--via",
        required=True,
        metavar="S3_PREFIX",
        help="s3://bucket/prefix/ to upload the file under for the check (a scratch key, "
        "deleted afterwards unless --keep)",
    )
    validate.add_argument(
        "--keep", action="store_true", help="leave the uploaded copy in the store"
    )
    validate.add_argument(
        "-f", "--file", dest="job_file", help="a job body (JSON or YAML) for everything else"
    )
    for flag, attribute, text in (
        ("--max-sequence-length", "max_sequence_length", "tokens (default 512)"),
        ("--epochs", "epochs", "passes over the data (default 3), for the step count"),
        ("--batch-size", "batch_size", "examples per step (default 8)"),
        (
            "--gradient-accumulation-steps",
            "gradient_accumulation_steps",
            "batches per optimizer step (default 1)",
        ),
        ("--packing", "packing", "true or false (default true)"),
    ):
        validate.add_argument(
            flag,
            dest=attribute,
            metavar="BOOL" if attribute == "packing" else "N",
            type=FLAG_TYPES[attribute],
            help=text,
        )
    _part_size(validate)

    download = command(
        model_commands,
        "download",
        cmd_download,
        "download a COMPLETED job's model into a directory (resumable: run it again to "
        "go on; files already complete are skipped)",
    )
    download.add_argument("job_id")
    download.add_argument("directory", help="local directory (created if missing)")


def _part_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--part-size",
        type=float,
        default=8,
        metavar="MiB",
        help="multipart part size in MiB (default 8; at least 5, S3's minimum)",
    )


def _reporting(handler: Callable[..., int]) -> Callable[..., int]:
    """A transfer failure as one line on stderr and the CLI's exit code for it."""

    def run(api: DataApi, args: argparse.Namespace, out: TextIO) -> int:
        from tuneforge.transfers import TransferError

        try:
            return handler(api, args, out)
        except TransferError as error:
            sys.stderr.write("tuneforge: " + " ".join(str(error).split()) + "\n")
            return error.exit_code

    return run


def _part_bytes(args: argparse.Namespace) -> int:
    return int(args.part_size * 1024 * 1024)


def cmd_upload(api: DataApi, args: argparse.Namespace, out: TextIO) -> int:
    from tuneforge import transfers

    destination = transfers.parse_s3_uri(args.destination)
    client = transfers.s3_client()
    result = transfers.upload_file(
        client, Path(args.file), destination, part_size=_part_bytes(args)
    )
    if args.output == "json":
        print_json(
            {
                "s3Uri": str(result.destination),
                "size": result.size,
                "parts": result.parts,
                "partsSent": result.parts_sent,
                "partsReused": result.parts_reused,
            },
            out,
        )
    else:
        out.write(result.summary(args.file) + "\n")
    return EXIT_OK


def cmd_download(api: DataApi, args: argparse.Namespace, out: TextIO) -> int:
    from tuneforge import transfers

    job = api.get_job(args.job_id)
    state = convert.state_name(job.state)
    if job.state != pb.COMPLETED or not job.output.model_s3_uri:
        if convert.is_terminal(job):
            raise transfers.TransferError(f"job {job.job_id} ended {state}: it has no model")
        raise transfers.TransferError(
            f"job {job.job_id} is {state}: its model is written when it is COMPLETED; "
            f"wait for it (tuneforge jobs watch {job.job_id}) and run this again"
        )
    source = transfers.parse_s3_uri(job.output.model_s3_uri)
    client = transfers.s3_client()
    result = transfers.download_prefix(client, source, Path(args.directory))
    if args.output == "json":
        print_json(
            {
                "s3Uri": str(result.source),
                "directory": args.directory,
                "files": result.files,
                "size": result.size,
                "fetched": result.fetched,
                "resumed": result.resumed,
                "alreadyComplete": result.complete,
                "bytesReceived": result.bytes_received,
            },
            out,
        )
    else:
        out.write(result.summary(args.directory) + "\n")
    return EXIT_OK


def _validate_body(args: argparse.Namespace, training_uri: str, via: str) -> dict[str, Any]:
    from tuneforge.transfers import EXIT_USAGE, TransferError

    try:
        body = load_file(args.job_file) if args.job_file else {}
    except UsageError as error:
        raise TransferError(str(error), EXIT_USAGE) from None
    body.setdefault("jobName", "data-validate")
    body["trainingDataConfig"] = {"s3Uri": training_uri}
    body.setdefault("outputDataConfig", {"s3Uri": via})
    if args.base_model:
        body["baseModelIdentifier"] = args.base_model
    if args.customization_type:
        body["customizationType"] = args.customization_type
    if not body.get("baseModelIdentifier"):
        raise TransferError(
            "--base-model is required (or baseModelIdentifier in --file)", EXIT_USAGE
        )
    hyper = body.setdefault("hyperParameters", {})
    for attribute, name in (
        ("max_sequence_length", "maxSequenceLength"),
        ("epochs", "epochCount"),
        ("batch_size", "batchSize"),
        ("gradient_accumulation_steps", "gradientAccumulationSteps"),
        ("packing", "packing"),
    ):
        value = getattr(args, attribute)
        if value is not None:
            hyper[name] = value
    return body


def _local_names(report: pb.JobValidationReport, remote: str, local: str) -> None:
    """The report speaks of the scratch object: make it speak of the local file."""
    fields = [report.errors, report.warnings]
    if report.HasField("training"):
        fields.append(report.training.over_max_sequence_length_lines)
        if report.training.s3_uri == remote:
            report.training.s3_uri = local
    for field in fields:
        texts = [text.replace(remote, local) for text in field]
        del field[:]
        field.extend(texts)


def cmd_validate(api: DataApi, args: argparse.Namespace, out: TextIO) -> int:
    from tuneforge import transfers
    from tuneforge.cli import print_validation_report

    path = Path(args.file)
    via = transfers.parse_s3_uri(args.via)
    prefix = via.key if not via.key or via.key.endswith("/") else via.key + "/"
    if not path.is_file():
        raise transfers.TransferError(f"no such file: {path}", transfers.EXIT_USAGE)
    # The same file gets the same scratch key, so an interrupted upload resumes.
    stat = path.stat()
    tag = hashlib.sha256(
        f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    scratch = transfers.S3Uri(via.bucket, f"{prefix}tuneforge-validate/{tag}/{path.name}")
    body = _validate_body(args, str(scratch), f"s3://{via.bucket}/{prefix}")
    try:
        request = convert.create_request(body)
    except ValueError as error:
        raise transfers.TransferError(
            f"the job does not fit the API: {error}", transfers.EXIT_USAGE
        ) from None
    request.validate_only = True
    client = transfers.s3_client()
    transfers.upload_file(client, path, scratch, part_size=_part_bytes(args))
    try:
        report = api.create_job(request).validation_report
    finally:
        if not args.keep:
            transfers.delete_object(client, scratch)
    _local_names(report, str(scratch), str(args.file))
    if args.output == "json":
        print_json(json_format.MessageToDict(report), out)
    else:
        print_validation_report(report, out)
    if args.keep:
        sys.stderr.write(f"tuneforge: the uploaded copy is kept at {scratch}\n")
    return EXIT_OK if report.valid else EXIT_INVALID_DATA
