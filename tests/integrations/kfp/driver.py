"""Compile a pipeline around tuneforge's KFP component and run it with KFP's local runner.

Runs in the Kubeflow Pipelines venv (.venv-kfp: the kfp SDK and clients/kfp), started by
tests/integrations/kfp/test_pipeline.py as a subprocess:

    .venv-kfp/bin/python driver.py ARGUMENTS.json WORK_DIR

ARGUMENTS.json holds the pipeline's arguments (the job's fields, the API's URL, an
idempotency token) and "runs", how many times to run the compiled pipeline with them. The
script defines the pipeline, compiles it to WORK_DIR/pipeline.yaml, loads that file back
(what a user uploads to a cluster is what runs here) and runs it in this process with
`kfp.local.SubprocessRunner`. The API key reaches the step the way a cluster gives it, as
the TUNEFORGE_API_KEY environment variable: here this process's own, which the local runner
passes on to the step's subprocess.

It writes WORK_DIR/result.json: per run, the pipeline's outputs (job id, model URI, the
model and metrics artifacts' metadata) or the error the local runner raised.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter and output
# types from its annotations as objects.
import json
import sys
import traceback
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, components, dsl, kubernetes, local
from kfp.dsl import Metrics, Model
from tuneforge_kfp import fine_tune

# The secret a cluster keeps the API key in (docs/kubeflow.md); the local runner ignores
# Kubernetes settings, the test checks the compiled YAML carries them.
SECRET_NAME = "tuneforge-api-key"
SECRET_KEY = "api-key"


class PipelineOutputs(NamedTuple):
    job_id: str
    model_uri: str
    model: Model
    metrics: Metrics


@dsl.pipeline(name="tuneforge-fine-tune", description="One tuneforge fine-tuning job.")
def fine_tune_pipeline(
    api_url: str,
    job_name: str,
    base_model: str,
    training_data_uri: str,
    validation_data_uri: str,
    output_uri: str,
    hyper_parameters: dict,
    client_request_token: str,
) -> PipelineOutputs:
    task = fine_tune(
        api_url=api_url,
        job_name=job_name,
        base_model=base_model,
        training_data_uri=training_data_uri,
        validation_data_uri=validation_data_uri,
        output_uri=output_uri,
        hyper_parameters=hyper_parameters,
        client_request_token=client_request_token,
        poll_interval_seconds=0.25,
    )
    # A cached result would be an old job's: every run asks tuneforge.
    task.set_caching_options(False)
    kubernetes.use_secret_as_env(
        task, secret_name=SECRET_NAME, secret_key_to_env={SECRET_KEY: "TUNEFORGE_API_KEY"}
    )
    return PipelineOutputs(
        job_id=task.outputs["job_id"],
        model_uri=task.outputs["model_uri"],
        model=task.outputs["model"],
        metrics=task.outputs["metrics"],
    )


def main(arguments_path: str, work_dir: str) -> None:
    work = Path(work_dir)
    arguments: dict[str, Any] = json.loads(Path(arguments_path).read_text())
    runs = arguments.pop("runs", 1)

    compiled = work / "pipeline.yaml"
    compiler.Compiler().compile(fine_tune_pipeline, package_path=str(compiled))
    pipeline = components.load_component_from_file(str(compiled))

    # use_venv=False: the step runs on this venv's Python, where kfp is already installed,
    # so the component's own `pip install kfp==<this release> --no-deps` finds it satisfied
    # (the test also sets PIP_NO_INDEX, so that step could not download anything).
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(work / "outputs"),
        raise_on_error=True,
    )
    results: list[dict[str, Any]] = []
    for _ in range(runs):
        try:
            task = pipeline(**arguments)
        except Exception as error:  # the runner's own error for a failed step, kept whole
            results.append(
                {"succeeded": False, "error": "".join(traceback.format_exception(error))}
            )
            continue
        outputs = task.outputs
        results.append(
            {
                "succeeded": True,
                "job_id": outputs["job_id"],
                "model_uri": outputs["model_uri"],
                "model": {"uri": outputs["model"].uri, "metadata": outputs["model"].metadata},
                "model_file": Path(outputs["model"].path).read_text(),
                "metrics": outputs["metrics"].metadata,
            }
        )
    (work / "result.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
