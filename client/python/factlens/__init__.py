"""Python client of the factlens gRPC service (see client.py)."""
from factlens.client import Client, FactlensError  # noqa: F401
