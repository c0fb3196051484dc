"""The core: the rules every face shares (jobs.py), behind the one object the faces call
(job_service.JobService); the API's request and answer shapes (schemas.py), the one
page-token codec (paging.py), names claimed by compare-and-swap (name_claims.py), custom
models (custom_models.py), MLflow host checks (integrations.py) and the jobs' metric rows
(training_metrics.py). The core never imports a face (make lint's import contracts)."""
