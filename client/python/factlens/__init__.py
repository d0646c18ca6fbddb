"""Python client of the factlens gRPC service: locating factual knowledge inside GPT-2 / Llama models.

    from factlens import Client
    with Client("127.0.0.1:50051") as c:    # or Client(): $FACTLENS_SERVER, $FACTLENS_MODEL
        report = c.locate_fact("The capital of France is", " Paris", progress=True)

See client.py (the Client), results.py (typed results), dataset.py (a DataFrame of facts spread over
replicas, BatchReport), plots.py, components.py (component names), errors.py (FactlensError and its
subclasses, FactlensWarning).
"""
from factlens.client import Client
from factlens.components import component_name, parse_component
from factlens.dataset import BatchReport
from factlens.errors import FactlensConnectionError, FactlensError, FactlensWarning, ModelNotServed

__all__ = ["BatchReport", "Client", "FactlensConnectionError", "FactlensError", "FactlensWarning", "ModelNotServed",
           "component_name", "parse_component"]
