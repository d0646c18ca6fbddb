"""Python client of the factlens gRPC service: locating factual knowledge inside GPT-2 / Llama models.

    from factlens import Client
    with Client("127.0.0.1:50051") as c:
        report = c.locate_fact("The capital of France is", " Paris", progress=True)

See client.py (the Client), results.py (typed results), plots.py, components.py (component names).
"""
from factlens.client import Client
from factlens.components import component_name, parse_component
from factlens.errors import FactlensError

__all__ = ["Client", "FactlensError", "component_name", "parse_component"]
