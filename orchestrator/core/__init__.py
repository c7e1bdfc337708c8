"""The pure core: the words of the design as types and rules, on the standard library, numpy and scipy only.

Nothing here imports torch, ray, mlflow, fastapi or pydantic (`tests/unit/test_import_contract.py`
enforces it), so the rules can be read, tested and reused without a cluster.
"""
