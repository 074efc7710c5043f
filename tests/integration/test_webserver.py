"""The Dagster webserver of the stack shows every demo dataset with its columns and its kind."""

import json
import urllib.request

from pipelines.catalog import DATASETS

QUERY = """
{ repositoryOrError(repositorySelector: {repositoryLocationName: "conflux",
                                         repositoryName: "__repository__"}) {
  ... on Repository { assetNodes {
    assetKey { path }
    kinds
    groupName
    metadataEntries { label ... on TableSchemaMetadataEntry { schema { columns { name type } } } }
} } } }
"""


def graphql(url: str, query: str) -> dict:
    req = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body["errors"]
    return body["data"]


def test_ui_lists_every_dataset_with_columns_and_kind(webserver):
    nodes = {"/".join(n["assetKey"]["path"]): n
             for n in graphql(webserver.settings.dagster_url, QUERY)["repositoryOrError"]["assetNodes"]}
    assert set(nodes) == {d.name for d in DATASETS}
    for ds in DATASETS:
        node = nodes[ds.name]
        assert ds.mode in node["kinds"], (ds.name, node["kinds"])
        schema = next(e for e in node["metadataEntries"] if e["label"] == "dagster/column_schema")
        assert [c["name"] for c in schema["schema"]["columns"]] == list(ds.contract.model_fields)
    assert nodes["orders"]["groupName"] == "sales"
