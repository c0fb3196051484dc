"""`tuneforge`: fine-tuning jobs from a shell.

    tuneforge jobs create --file job.yaml --watch
    tuneforge jobs create --name demo --base-model s3://demo/models/tiny-llama/ \\
        --training-data s3://demo/datasets/sample-train.jsonl --output-data s3://demo/output/
    tuneforge jobs list --state RUNNING
    tuneforge jobs get JOB_ID --output json
    tuneforge jobs watch JOB_ID
    tuneforge jobs logs JOB_ID --follow
    tuneforge jobs stop JOB_ID

Talks gRPC to --endpoint (default 127.0.0.1:50051, or $TUNEFORGE_ENDPOINT), or REST to
--rest URL (or $TUNEFORGE_REST_URL).

Exit codes: 0 success; 1 the service refused the request (the reason is printed on
one line: code, message, field); 2 bad usage (flags, an unreadable job file);
3 the service cannot be reached; 4 `watch` (or `create --watch`) saw the job end
FAILED or STOPPED; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from tuneforge import __version__, convert, keys_cli
from tuneforge.client import DEFAULT_ENDPOINT, Client
from tuneforge.display import ProgressView, print_job, print_json
from tuneforge.errors import ApiError, DeadlineExceeded, Unavailable
from tuneforge.rest import RestClient
from tuneforge.v1 import fine_tuning_pb2 as pb

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_JOB_UNSUCCESSFUL = 4
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    pass


class JobsApi(Protocol):
    """What the CLI needs; `Client` (gRPC) and `RestClient` both provide it."""

    def create_job(self, request: pb.CreateJobRequest) -> pb.CreateJobResponse: ...
    def get_job(self, job_id: str) -> pb.Job: ...
    def list_jobs(
        self, *, state: str | int | None = ..., page_size: int = ..., page_token: str = ...
    ) -> pb.ListJobsResponse: ...
    def stop_job(self, job_id: str) -> pb.Job: ...
    def watch(self, job_id: str) -> Iterator[pb.Job]: ...
    def list_job_events(self, job_id: str, *, page_size: int = ...) -> list[pb.JobEvent]: ...
    def list_checkpoints(self, job_id: str) -> list[pb.Checkpoint]: ...
    def read_job_log(
        self, job_id: str, *, offset: int = ..., max_bytes: int = ...
    ) -> pb.ReadJobLogResponse: ...
    def close(self) -> None: ...


# -- formatting -----------------------------------------------------------------------


# -- commands -------------------------------------------------------------------------


def _load_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            loaded = yaml.safe_load(text)
        else:
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:
                import yaml

                loaded = yaml.safe_load(text)
    except Exception as error:  # yaml's errors have no common public base worth naming
        raise UsageError(f"{path} is neither JSON nor YAML: {error}".splitlines()[0]) from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{path} must hold one object (a job to create)")
    return loaded


_CREATE_FLAGS: list[tuple[str, str, str]] = [
    # (attribute, path in the body, description)
    ("name", "jobName", "job name (letters, digits, '-', '+', '.'; 1-63 characters)"),
    ("base_model", "baseModelIdentifier", "s3:// prefix of the base model"),
    ("training_data", "trainingDataConfig.s3Uri", "s3:// URI of the training JSONL"),
    ("validation_data", "validationDataConfig.s3Uri", "s3:// URI of the validation JSONL"),
    ("output_data", "outputDataConfig.s3Uri", "s3:// prefix to write the job's output under"),
    ("client_request_token", "clientRequestToken", "idempotency token"),
    ("epochs", "hyperParameters.epochCount", "passes over the data (default 3)"),
    ("batch_size", "hyperParameters.batchSize", "examples per step (default 8)"),
    ("learning_rate", "hyperParameters.learningRate", "peak learning rate (default 5e-5)"),
    ("warmup_steps", "hyperParameters.learningRateWarmupSteps", "warm-up steps (default 0)"),
    (
        "gradient_accumulation_steps",
        "hyperParameters.gradientAccumulationSteps",
        "batches per optimizer step (default 1)",
    ),
    ("max_sequence_length", "hyperParameters.maxSequenceLength", "tokens (default 512)"),
    ("weight_decay", "hyperParameters.weightDecay", "AdamW weight decay (default 0)"),
    ("seed", "hyperParameters.seed", "random seed (default 42)"),
    ("dropout", "hyperParameters.dropout", "dropout on the model's config (default: the model's)"),
    ("lr_scheduler", "hyperParameters.lrScheduler", "linear, cosine or constant (default linear)"),
    ("max_grad_norm", "hyperParameters.maxGradNorm", "gradient clipping norm, 0 off (default 1)"),
    ("eval_interval_steps", "hyperParameters.evalIntervalSteps", "evaluate every N steps"),
    (
        "checkpoint_interval_steps",
        "hyperParameters.checkpointIntervalSteps",
        "checkpoint every N steps",
    ),
    ("keep_checkpoints", "hyperParameters.keepCheckpoints", "checkpoints kept (default 2)"),
    (
        "early_stopping_patience",
        "hyperParameters.earlyStoppingPatience",
        "evaluations without improvement before stopping (default 0: off)",
    ),
    (
        "early_stopping_threshold",
        "hyperParameters.earlyStoppingThreshold",
        "smallest validation-loss drop that counts (default 0)",
    ),
    ("precision", "hyperParameters.precision", "auto, bf16 or fp32 (default auto)"),
    ("method", "hyperParameters.method", "FULL or LORA (default FULL)"),
    ("lora_rank", "hyperParameters.loraRank", "LoRA rank (default 8)"),
    ("lora_alpha", "hyperParameters.loraAlpha", "LoRA alpha (default 16)"),
    ("lora_dropout", "hyperParameters.loraDropout", "LoRA dropout (default 0.05)"),
    (
        "lora_target_modules",
        "hyperParameters.loraTargetModules",
        "comma-separated module names (default: per architecture)",
    ),
    ("packing", "hyperParameters.packing", "true or false (default true)"),
    ("merge_adapter", "hyperParameters.mergeAdapter", "true or false (default false)"),
]


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise argparse.ArgumentTypeError(f"want true or false, got {text!r}")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


_FLAG_TYPES: dict[str, Callable[[str], Any]] = {
    "epochs": int,
    "batch_size": int,
    "learning_rate": float,
    "warmup_steps": int,
    "gradient_accumulation_steps": int,
    "max_sequence_length": int,
    "weight_decay": float,
    "seed": int,
    "dropout": float,
    "max_grad_norm": float,
    "eval_interval_steps": int,
    "checkpoint_interval_steps": int,
    "keep_checkpoints": int,
    "early_stopping_patience": int,
    "early_stopping_threshold": float,
    "lora_rank": int,
    "lora_alpha": float,
    "lora_dropout": float,
    "lora_target_modules": _names,
    "packing": _boolean,
    "merge_adapter": _boolean,
}


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    body = _load_file(args.file) if args.file else {}
    for attribute, path, _ in _CREATE_FLAGS:
        value = getattr(args, attribute)
        if value is None:
            continue
        target = body
        *parents, last = path.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise UsageError(f"{parent} in the job file must be an object")
        target[last] = value
    for tag in args.tag or []:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag wants KEY=VALUE, got {tag!r}")
        body.setdefault("tags", {})[key] = value
    return body


def cmd_create(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    try:
        request = convert.create_request(_create_body(args))
    except ValueError as error:
        raise UsageError(f"the job does not fit the API: {error}") from None
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


def cmd_logs(api: JobsApi, args: argparse.Namespace, out: TextIO) -> int:
    offset = -args.tail if args.tail else 0
    sink = getattr(out, "buffer", None)
    first = True
    while True:
        piece = api.read_job_log(args.job_id, offset=offset)
        if first and args.tail and piece.next_offset - len(piece.data) > 0:
            # --tail: start at the first whole line, not in the middle of one.
            cut = piece.data.find(b"\n")
            piece.data = piece.data[cut + 1 :] if cut >= 0 else b""
        first = False
        if piece.data:
            if sink is not None:
                out.flush()
                sink.write(piece.data)
                sink.flush()
            else:
                out.write(piece.data.decode("utf-8", errors="replace"))
        offset = piece.next_offset
        if piece.next_offset < piece.size:
            continue  # more to read now
        if not args.follow:
            return EXIT_OK
        if convert.is_terminal(api.get_job(args.job_id)):
            # The trainer uploads its log last of all; read what came after.
            last = api.read_job_log(args.job_id, offset=offset)
            if last.data and sink is not None:
                sink.write(last.data)
                sink.flush()
            elif last.data:
                out.write(last.data.decode("utf-8", errors="replace"))
            return EXIT_OK
        time.sleep(args.interval)


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
    for checkpoint in checkpoints:
        data = convert.checkpoint_to_dict(checkpoint)
        out.write(f"step {data['step']:<8} {data['committedAt'] or '-':<26} {data['s3Uri']}\n")
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
    groups = parser.add_subparsers(dest="group", required=True, metavar="{jobs,keys}")
    jobs = groups.add_parser("jobs", help="fine-tuning jobs", allow_abbrev=False)
    commands = jobs.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help, parents=[common], allow_abbrev=False
        )
        sub.set_defaults(handler=handler)
        return sub

    create = command("create", cmd_create, "create a job from a JSON/YAML file and/or flags")
    create.add_argument("-f", "--file", help="the job as JSON or YAML (REST's body; - = stdin)")
    for attribute, path, description in _CREATE_FLAGS:
        create.add_argument(
            "--" + attribute.replace("_", "-"),
            dest=attribute,
            type=_FLAG_TYPES.get(attribute, str),
            help=f"{description} [{path}]",
        )
    create.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag (repeatable)")
    create.add_argument("--watch", action="store_true", help="then watch it until it ends")
    create.add_argument("-q", "--quiet", action="store_true", help="print only the job id")

    command("get", cmd_get, "describe a job").add_argument("job_id")

    listing = command("list", cmd_list, "list jobs, newest first")
    listing.add_argument("--state", help="only jobs in this state (RUNNING, FAILED, ...)")
    listing.add_argument("--limit", type=int, default=20, help="jobs per page (1-100)")
    listing.add_argument("--page-token", help="nextPageToken of the previous page")
    listing.add_argument("--all", action="store_true", help="every page")

    command("stop", cmd_stop, "ask a job to stop").add_argument("job_id")
    command("watch", cmd_watch, "follow a job's state and progress until it ends").add_argument(
        "job_id"
    )

    logs = command("logs", cmd_logs, "print the trainer's log")
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--tail", type=int, metavar="BYTES", help="only the last BYTES")
    logs.add_argument(
        "--interval", type=float, default=2.0, help="seconds between reads with --follow"
    )

    events = command("events", cmd_events, "list a job's lifecycle events, oldest first")
    events.add_argument("job_id")
    events.add_argument(
        "--page-size", type=int, default=100, help="events fetched per request (1-1000)"
    )
    command("checkpoints", cmd_checkpoints, "list a job's committed checkpoints").add_argument(
        "job_id"
    )
    keys_cli.add_commands(groups, common)
    return parser


def _connect(args: argparse.Namespace) -> JobsApi:
    if args.rest:
        return RestClient(args.rest, timeout=args.timeout, max_attempts=3, api_key=args.api_key)
    return Client(args.endpoint, timeout=args.timeout, max_attempts=3, api_key=args.api_key)


def _fail(message: str) -> None:
    sys.stderr.write("tuneforge: " + " ".join(message.split()) + "\n")


def _run_keys_command(args: argparse.Namespace, out: TextIO) -> int:
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
    if getattr(args, "keys_command", False):
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
