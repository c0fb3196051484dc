"""The Ray cluster fixtures (tests/launch/ray_cluster.py) for every module here."""

from tests.launch.ray_cluster import ray_api_server, ray_cluster

__all__ = ["ray_api_server", "ray_cluster"]
