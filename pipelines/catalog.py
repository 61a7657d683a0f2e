"""Print each asset's table and columns: ``./dev python -m pipelines.catalog`` (what the UI shows
under Overview -> Columns; ``dagster asset list`` does not print metadata)."""

from __future__ import annotations

from pipelines.definitions import defs


def describe_assets() -> str:
    """Each asset of the code location with its ``dagster/table_name`` and columns, as text
    (``python -m pipelines.catalog``: what the UI shows under Overview -> Columns)."""
    repo = defs.get_repository_def()
    out = []
    for key in sorted(repo.asset_graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        md = repo.assets_defs_by_key[key].metadata_by_key.get(key, {})
        schema = md.get("dagster/column_schema")
        if not schema:
            continue
        out.append(f"{key.to_user_string()}  ->  {md.get('dagster/table_name')}")
        for col in schema.columns:
            null = "" if col.constraints.nullable else " not null"
            out.append(f"    {col.name:<22} {col.type}{null}" + (f"  -- {col.description}" if col.description else ""))
    return "\n".join(out)


if __name__ == "__main__":
    print(describe_assets())
