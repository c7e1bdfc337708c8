"""Reading a sweep's runs back from MLflow."""
from __future__ import annotations

from typing import Optional

from mlflow.tracking import MlflowClient

from .layout import TAG_KIND, TAG_PARENT, TAG_SWEEP, TAG_TRIAL, quote


def read_sweep_runs(tracking_uri: str, sweep_name: str, experiment: Optional[str] = None):
    """The latest parent run of `sweep_name` and its child runs (sorted by trial id).

    `experiment` None = search every experiment (a sweep's own, or a shared one of older sweeps).
    """
    client = MlflowClient(tracking_uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(
        exp_ids, filter_string=f"tags.`{TAG_SWEEP}` = '{quote(sweep_name)}' and tags.`{TAG_KIND}` = 'sweep'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise LookupError(f"no MLflow parent run for sweep {sweep_name!r} at {tracking_uri}")
    parent = parents[0]
    children = []
    token = None
    while True:
        page = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'",
                                  max_results=1000, page_token=token)
        children.extend(page)
        token = page.token
        if not token:
            break
    children.sort(key=lambda r: r.data.tags.get(TAG_TRIAL, ""))
    return parent, children
