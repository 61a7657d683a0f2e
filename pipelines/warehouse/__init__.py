"""The Postgres warehouse: connection URLs and the embedded server (``db``), migrations, the loader,
the Postgres token store, the analytics views, and the Dagster resource (``resource``)."""
