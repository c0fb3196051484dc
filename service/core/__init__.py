"""The core: the rules every face shares (jobs.py), behind the one object the faces call
(job_service.JobService), with the page-token codec (paging.py) and the jobs' metric rows
(training_metrics.py). The core never imports a face (make lint's import contracts)."""
