"""Where a store's parts live (`orchestrator.io.store_location`) and the spec's `store` field."""
from __future__ import annotations

import pyarrow as pa
import pytest

from orchestrator.config.spec import SpecError, parse_spec
from orchestrator.io.store_location import StoreLocation, check_uri, is_uri
from orchestrator.app.api import EXAMPLE_SPEC


def test_local_location_writes_whole_parts_and_lists_them(tmp_path):
    loc = StoreLocation(tmp_path / "store")
    loc.makedirs("observations")
    table = pa.table({"step": [1, 2, 3]})
    paths = [loc.write_table("observations", f"part-{i}.parquet", table) for i in range(2)]
    assert loc.parts("observations") == sorted(paths)
    assert not list((tmp_path / "store" / "observations").glob(".*.tmp"))  # renamed into place
    assert loc.read_table(paths[0]).equals(table)
    loc.delete(paths[0])
    loc.delete(paths[0])  # gone already: nothing to do
    assert loc.parts("observations") == [paths[1]] and loc.parts("missing") == []


@pytest.mark.parametrize("uri,ok", [("s3://bucket/sweeps/x", True), ("s3://bucket", True), ("gs://bucket/x", False),
                                    ("s3:///no-bucket", False), ("http://host/x", False)])
def test_check_uri(uri, ok):
    assert is_uri(uri)
    if ok:
        assert check_uri(uri) == uri
    else:
        with pytest.raises(ValueError):
            check_uri(uri)


def test_spec_store_field():
    assert parse_spec({**EXAMPLE_SPEC, "store": "s3://bucket/sweeps/x"}).store == "s3://bucket/sweeps/x"
    assert parse_spec(EXAMPLE_SPEC).store is None
    with pytest.raises(SpecError, match=r"store: .*scheme 'gs'"):
        parse_spec({**EXAMPLE_SPEC, "store": "gs://bucket/x"})
