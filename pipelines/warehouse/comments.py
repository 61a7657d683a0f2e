"""Writing ``COMMENT ON`` for schemas, tables, views and columns, where the stored comment differs.

The texts come from :mod:`pipelines.warehouse.catalog` (tables, schemas) and from each view's SQL
header (:mod:`pipelines.warehouse.views`); this module only writes them, so both can use it.
"""

from __future__ import annotations

import psycopg
from psycopg import sql


def write_comments(
    conn: psycopg.Connection,
    wanted: dict[tuple[str, str], tuple[str, dict[str, str]]],
    schemas: dict[str, str] | None = None,
) -> int:
    """``COMMENT ON`` each relation of ``wanted`` (``(schema, name)`` -> (its comment, {column:
    comment})) and its columns, and each schema of ``schemas`` (name -> comment), where they exist
    and the stored comment differs. Returns the number of comments written."""
    written = 0
    with conn.cursor() as cur:
        if schemas:
            cur.execute(
                "select nspname, obj_description(oid, 'pg_namespace') from pg_namespace where nspname = any(%s)",
                (list(schemas),),
            )
            for schema, current in cur.fetchall():
                if current != schemas[schema]:
                    cur.execute(
                        sql.SQL("comment on schema {} is {}").format(
                            sql.Identifier(schema), sql.Literal(schemas[schema])
                        )
                    )
                    written += 1
        cur.execute(
            """
            select ns.nspname, cls.relname, cls.relkind, obj_description(cls.oid, 'pg_class'),
                   att.attname, col_description(cls.oid, att.attnum)
            from pg_class as cls
            join pg_namespace as ns on ns.oid = cls.relnamespace
            join pg_attribute as att on att.attrelid = cls.oid and att.attnum > 0 and not att.attisdropped
            where ns.nspname = any(%s) and cls.relkind in ('r', 'p', 'v', 'm')
            """,
            (sorted({s for s, _ in wanted}),),
        )
        seen: set[tuple[str, str]] = set()
        for schema, relation, kind, rel_comment, column, col_comment in cur.fetchall():
            entry = wanted.get((schema, relation))
            if entry is None:
                continue
            text, columns = entry
            target = sql.Identifier(schema, relation)
            if (schema, relation) not in seen:
                seen.add((schema, relation))
                if rel_comment != text:
                    what = sql.SQL("view" if kind == "v" else "materialized view" if kind == "m" else "table")
                    cur.execute(sql.SQL("comment on {} {} is {}").format(what, target, sql.Literal(text)))
                    written += 1
            if column in columns and col_comment != columns[column]:
                cur.execute(
                    sql.SQL("comment on column {}.{} is {}").format(
                        target, sql.Identifier(column), sql.Literal(columns[column])
                    )
                )
                written += 1
    return written
