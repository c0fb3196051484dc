"""Run the example DAG with `dag.test()`, in the Airflow venv, and write what happened.

tests/integrations/airflow/test_example_dag.py starts this with .venv-airflow/bin/python,
since Airflow cannot be installed beside the service. The environment it is given holds
the Airflow settings (AIRFLOW_HOME, the sqlite database, the DAGs folder) and the AWS
connection to the tuneforge server under test.

Arguments: the DAG's id, a JSON list of run configurations (one `dag.test()` each, in
turn), and the file to write the outcome to, as JSON: for each run, its state and, for
each task, its state and its return value (XCom).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    dag_id, runs, result_path = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])

    # Airflow reads its settings on import: imported only once the environment is final.
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.settings import conf
    from airflow.utils.db import initdb
    from airflow.utils.session import create_session

    # A new sqlite database, its tables made from the models at once (what
    # `airflow db migrate` does for an empty database, without a second Airflow start).
    initdb()

    # The DAG as Airflow's own parser loads it from the DAGs folder, the file the docs show.
    bag = DagBag(dag_folder=conf.get("core", "dags_folder"))
    if bag.import_errors:
        raise SystemExit(f"the DAG folder did not import: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise SystemExit(f"no DAG {dag_id} in {conf.get('core', 'dags_folder')}")

    outcome: list[dict[str, Any]] = []
    for run_conf in runs:
        run = dag.test(run_conf=run_conf)
        tasks: dict[str, dict[str, Any]] = {}
        with create_session() as session:
            for instance in run.get_task_instances(session=session):
                found = session.scalars(
                    XComModel.get_many(
                        run_id=run.run_id,
                        dag_ids=dag_id,
                        task_ids=instance.task_id,
                        key="return_value",
                    )
                ).first()
                tasks[instance.task_id] = {
                    "state": str(instance.state) if instance.state else None,
                    "return_value": (
                        XComModel.deserialize_value(found) if found is not None else None
                    ),
                }
        outcome.append({"run_id": run.run_id, "state": str(run.state), "tasks": tasks})
    result_path.write_text(json.dumps(outcome, indent=2))


if __name__ == "__main__":
    main()
