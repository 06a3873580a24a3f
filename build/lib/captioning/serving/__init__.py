"""Serving: the captioner as an MLflow model from code (mlflow_model.py, pyfunc_model.py) with its request rules
(requests.py), a captioner by reference (load.py), the model registry's champion rule, promotion and rollback
(registry.py, `captioning-registry`), and a local PostgreSQL and MLflow server for several workers (infra.py)."""
