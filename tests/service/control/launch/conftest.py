"""The Ray cluster fixtures (tests/service/control/launch/ray_cluster.py) for every module here."""

from tests.service.control.launch.ray_cluster import ray_api_server, ray_cluster

__all__ = ["ray_api_server", "ray_cluster"]
