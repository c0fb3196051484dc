"""`tuneforge`: fine-tuning jobs from a shell.

    tuneforge jobs create --file job.yaml --watch
    tuneforge jobs create --name demo --base-model s3://demo/models/tiny-llama/ \\
        --training-data s3://demo/datasets/sample-train.jsonl --output-data s3://demo/output/
    tuneforge jobs list --state RUNNING
    tuneforge jobs get JOB_ID --output json
    tuneforge jobs watch JOB_ID
    tuneforge jobs logs JOB_ID --follow
    tuneforge jobs logs JOB_ID --attempt 1
    tuneforge jobs stop JOB_ID
    tuneforge jobs pause JOB_ID      (then: tuneforge jobs resume JOB_ID)
    tuneforge jobs create --file job.yaml --validate-only   (a dry run: the report, no job)
    tuneforge data upload FILE s3://bucket/key        (resumable multipart upload)
    tuneforge data validate FILE --type FINE_TUNING --base-model URI --via s3://bucket/tmp/
    tuneforge models download JOB_ID DIR              (resumable; the job's finished model)

Talks gRPC to --endpoint (default 127.0.0.1:50051, or $TUNEFORGE_ENDPOINT), or REST to
--rest URL (or $TUNEFORGE_REST_URL).

Exit codes: 0 success; 1 the service refused the request (the reason is printed on
one line: code, message, field); 2 bad usage (flags, an unreadable job file);
3 the service cannot be reached; 4 `watch` (or `create --watch`) saw the job end
FAILED or STOPPED; 5 `create --validate-only` found problems in the data or model;
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TextIO

from google.protobuf import json_format

from tuneforge import (
    __version__,
    convert,
    create_flags,
    data_cli,
    keys_cli,
    logs_cli,
    webhooks_cli,
)
from tuneforge.client import DEFAULT_ENDPOINT, Client
from tuneforge.create_flags import UsageError
from tuneforge.display import ProgressView, print_checkpoints, print_job, print_json
from tuneforge.errors import ApiError, DeadlineExceeded, Unavailable
from tuneforge.rest import RestClient
from tuneforge.v1 import fine_tuning_pb2 as pb

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_JOB_UNSUCCESSFUL = 4
EXIT_INVALID_DATA = 5
EXIT_INTERRUPTED = 130


class JobsApi(Protocol):
    """What the CLI needs; `Client` (gRPC) and `RestClient` both provide it."""

    def create_job(self, request: pb.CreateJobRequest) -> pb.CreateJobResponse: ...
    def get_job(self, job_id: str) -> pb.Job: ...
    def list_jobs(
        self, *, state: str | int | None = ..., page_size: int = ..., page_token: str = ...
    ) -> pb.ListJobsResponse: ...
    def stop_job(self, job_id: str) -> pb.Job: ...

    def pause_job(self, job_id: str) -> pb.Job: ...

    def resume_job(self, job_id: str) -> pb.Job: ...
    def watch(self, job_id: str) -> Iterator[pb.Job]: ...
    def list_job_events(self, job_id: str, *, page_size: int = ...) -> list[pb.JobEvent]: ...
    def list_checkpoints(self, job_id: str) -> list[pb.Checkpoint]: ...
    def read_job_log(
        self, job_id: str, *, offset: int = ..., max_bytes: int = ..., attempt: int | None = ...
    ) -> pb.ReadJobLogResponse: ...
    def close(self) -> None: ...


# -- commands -------------------------------------------------------------------------


def cmd_create(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    try:
        request = convert.create_request(create_flags.create_body(args))
    except ValueError as error:
        raise UsageError(f"the job does not fit the API: {error}") from None
    if args.validate_only:
        if args.watch:
            raise UsageError("--validate-only creates no job to --watch")
        request.validate_only = True
        report = api.create_job(request).validation_report
        if args.output == "json":
            print_json(json_format.MessageToDict(report), out)
        else:
            print_validation_report(report, out)
        return EXIT_OK if report.valid else EXIT_INVALID_DATA
    response = api.create_job(request)
    job = response.job
    if args.quiet:
        out.write(job.job_id + "\n")
    elif args.output == "json":
        print_json(convert.job_to_dict(job), out)
    elif response.created:
        out.write(f"created job {job.job_id} ({job.job_name}), {convert.state_name(job.state)}\n")
    else:
        out.write(f"job {job.job_id} ({job.job_name}) already exists for this request token\n")
    if args.watch:
        out.flush()
        return _watch(api, job.job_id, args, out)
    return EXIT_OK


def print_validation_report(report: pb.JobValidationReport, out: TextIO) -> None:
    """A dry run's report as a person reads it: the verdict, every problem, the counts."""
    if report.valid:
        out.write("valid: the job would start training\n")
    else:
        out.write(f"invalid: {report.error_count} problem(s)\n")
    for error in report.errors:
        out.write(f"  error: {error}\n")
    for warning in report.warnings:
        out.write(f"  warning: {warning}\n")
    for name in ("training", "validation"):
        if not report.HasField(name):
            continue
        split = getattr(report, name)
        tokens = split.tokens if split.HasField("tokens") else "not counted"
        out.write(
            f"{name}: {split.s3_uri}: {split.records} records, {tokens} tokens, "
            f"{split.over_max_sequence_length} over maxSequenceLength\n"
        )
    if report.labels:
        out.write(f"labels: {', '.join(report.labels)}\n")
    if report.HasField("total_steps"):
        out.write(f"steps: {report.steps_per_epoch} an epoch, {report.total_steps} in all\n")
    if report.HasField("estimate"):
        estimate = report.estimate
        out.write(
            f"estimated training time: {estimate.seconds:,.0f} s on {estimate.devices} "
            f"{estimate.device} ({estimate.assumption})\n"
        )


def cmd_get(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    job = api.get_job(args.job_id)
    if args.output == "json":
        print_json(convert.job_to_dict(job), out)
    else:
        print_job(job, out)
    return EXIT_OK


def cmd_list(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    found: list[pb.Job] = []
    token = args.page_token or ""
    while True:
        page = api.list_jobs(state=args.state, page_size=args.limit, page_token=token)
        found.extend(page.jobs)
        token = page.next_page_token
        if not token or not args.all:
            break
    if args.output == "json":
        print_json(
            {"jobs": [convert.job_to_dict(j) for j in found], "nextPageToken": token or None}, out
        )
        return EXIT_OK
    out.write(f"{'JOB ID':<17} {'NAME':<24} {'STATE':<11} {'STEP':>11}  CREATED\n")
    for job in found:
        data = convert.job_to_dict(job)
        step = str(data["progress"]["step"])
        if data["progress"]["totalSteps"]:
            step += f"/{data['progress']['totalSteps']}"
        out.write(
            f"{data['jobId']:<17} {data['jobName'][:24]:<24} {data['state']:<11} {step:>11}  "
            f"{data['createdAt']}\n"
        )
    if token:
        sys.stderr.write(f"more jobs: --page-token {token} (or --all)\n")
    return EXIT_OK


def cmd_stop(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    job = api.stop_job(args.job_id)
    if args.output == "json":
        print_json(convert.job_to_dict(job), out)
    else:
        out.write(f"job {job.job_id}: {convert.state_name(job.state)}\n")
    return EXIT_OK


def cmd_pause(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    job = api.pause_job(args.job_id)
    if args.output == "json":
        print_json(convert.job_to_dict(job), out)
    else:
        out.write(f"job {job.job_id}: {convert.state_name(job.state)} (pause requested)\n")
    return EXIT_OK


def cmd_resume(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    job = api.resume_job(args.job_id)
    if args.output == "json":
        print_json(convert.job_to_dict(job), out)
    else:
        out.write(f"job {job.job_id}: {convert.state_name(job.state)} (resume requested)\n")
    return EXIT_OK


def _watch(api: JobsApi, job_id: str, args: argparse.Namespace, out: TextIO) -> int:
    view = ProgressView(out, live=out.isatty())
    final: pb.Job | None = None
    for job in api.watch(job_id):
        final = job
        if args.output == "json":
            print_json(convert.job_to_dict(job), out, indent=None)
            out.flush()
        else:
            view.update(job)
    if final is None:  # pragma: no cover - a watch always sends the state first
        raise Unavailable(f"no state received for job {job_id}")
    if args.output != "json":
        view.finish(final)
    return EXIT_OK if final.state == pb.COMPLETED else EXIT_JOB_UNSUCCESSFUL


def cmd_watch(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    return _watch(api, args.job_id, args, out)


def cmd_events(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    events = api.list_job_events(args.job_id, page_size=args.page_size)  # walks the pages
    if args.output == "json":
        print_json({"events": [convert.event_to_dict(e) for e in events]}, out)
        return EXIT_OK
    for event in events:
        data = convert.event_to_dict(event)
        state = f" [{data['state']}]" if data["state"] else ""
        out.write(f"{data['time']}  {data['type']:<20} {data['message']}{state}\n")
    return EXIT_OK


def cmd_checkpoints(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    checkpoints = api.list_checkpoints(args.job_id)
    if args.output == "json":
        print_json({"checkpoints": [convert.checkpoint_to_dict(c) for c in checkpoints]}, out)
        return EXIT_OK
    print_checkpoints([convert.checkpoint_to_dict(c) for c in checkpoints], out)
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------


def _common(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before the command and after it (`jobs get ID --output json`)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--endpoint",
        default=default(os.environ.get("TUNEFORGE_ENDPOINT", DEFAULT_ENDPOINT)),
        help=f"gRPC host:port (default $TUNEFORGE_ENDPOINT or {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--rest",
        metavar="URL",
        default=default(os.environ.get("TUNEFORGE_REST_URL") or None),
        help="use the REST API at URL instead of gRPC (default $TUNEFORGE_REST_URL)",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=default(os.environ.get("TUNEFORGE_API_KEY") or None),
        help="API key, when the server requires one (default $TUNEFORGE_API_KEY)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(30.0),
        help="deadline of each call, seconds (default 30)",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default=default("text"),
        help="text for people, json (the REST API's shapes) for scripts",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)
    parser = argparse.ArgumentParser(
        prog="tuneforge",
        description="Create, watch and stop tuneforge fine-tuning jobs.",
        epilog="Exit codes: 0 ok, 1 refused by the service, 2 bad usage, 3 service "
        "unreachable, 4 watched job ended FAILED or STOPPED.",
        parents=[_common(defaults=True)],
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    groups = parser.add_subparsers(
        dest="group", required=True, metavar="{jobs,data,models,keys,webhooks}"
    )
    jobs = groups.add_parser("jobs", help="fine-tuning jobs", allow_abbrev=False)
    commands = jobs.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help, parents=[common], allow_abbrev=False
        )
        sub.set_defaults(handler=handler)
        return sub

    create = command("create", cmd_create, "create a job from a JSON/YAML file and/or flags")
    create_flags.add_arguments(create)
    create.add_argument("--watch", action="store_true", help="then watch it until it ends")
    create.add_argument(
        "--validate-only",
        action="store_true",
        help="a dry run: check the data and model as the job's VALIDATING stage would and "
        "print the report (every problem with file:line); creates nothing",
    )
    create.add_argument("-q", "--quiet", action="store_true", help="print only the job id")

    command("get", cmd_get, "describe a job").add_argument("job_id")

    listing = command("list", cmd_list, "list jobs, newest first")
    listing.add_argument("--state", help="only jobs in this state (RUNNING, FAILED, ...)")
    listing.add_argument("--limit", type=int, default=20, help="jobs per page (1-100)")
    listing.add_argument("--page-token", help="nextPageToken of the previous page")
    listing.add_argument("--all", action="store_true", help="every page")

    command("stop", cmd_stop, "ask a job to stop").add_argument("job_id")
    command(
        "pause", cmd_pause, "ask a job to pause (a committed checkpoint, then PAUSED)"
    ).add_argument("job_id")
    command("resume", cmd_resume, "resume a paused job from its newest checkpoint").add_argument(
        "job_id"
    )
    command("watch", cmd_watch, "follow a job's state and progress until it ends").add_argument(
        "job_id"
    )

    logs_cli.add_arguments(command("logs", logs_cli.cmd_logs, "print the trainer's log"))

    events = command("events", cmd_events, "list a job's lifecycle events, oldest first")
    events.add_argument("job_id")
    events.add_argument(
        "--page-size", type=int, default=100, help="events fetched per request (1-1000)"
    )
    command("checkpoints", cmd_checkpoints, "list a job's committed checkpoints").add_argument(
        "job_id"
    )
    data_cli.add_commands(groups, common)
    keys_cli.add_commands(groups, common)
    webhooks_cli.add_commands(groups, common)
    return parser


def _connect(args: argparse.Namespace) -> JobsApi:
    if args.rest:
        return RestClient(args.rest, timeout=args.timeout, max_attempts=3, api_key=args.api_key)
    return Client(args.endpoint, timeout=args.timeout, max_attempts=3, api_key=args.api_key)


def _fail(message: str) -> None:
    sys.stderr.write("tuneforge: " + " ".join(message.split()) + "\n")


def _run_keys_command(args: argparse.Namespace, out: TextIO) -> int:
    """A `keys` or `webhooks` command: REST calls outside the jobs API."""
    try:
        handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
        return handler(args, out)
    except Unavailable as error:
        _fail(str(error))
        return EXIT_UNREACHABLE
    except ApiError as error:
        _fail(str(error))
        return EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output == "json" and getattr(args, "quiet", False):
        args.quiet = False
    out = sys.stdout
    if getattr(args, "keys_command", False) or getattr(args, "rest_command", False):
        return _run_keys_command(args, out)
    try:
        if args.command == "list" and args.state is not None:
            convert.state_value(args.state)  # a bad state is a usage error, found here
        api = _connect(args)
    except ValueError as error:
        _fail(str(error))
        return EXIT_USAGE
    try:
        handler: Callable[[JobsApi, argparse.Namespace, TextIO], int] = args.handler
        return handler(api, args, out)
    except UsageError as error:
        _fail(str(error))
        return EXIT_USAGE
    except (Unavailable, DeadlineExceeded) as error:
        where = args.rest or args.endpoint
        _fail(f"{error} [{where}]")
        return EXIT_UNREACHABLE
    except ApiError as error:
        _fail(str(error))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `tuneforge jobs list | head`
        sys.stderr.close()
        return EXIT_OK
    finally:
        api.close()


if __name__ == "__main__":
    sys.exit(main())
