"""Alembic's environment: always online, on the connection the store hands over."""

from __future__ import annotations

from alembic import context

from partbench.store import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("partbench migrations run through partbench.store.Store, which passes a connection")

# A table name of partbench's own, so a database shared with another Alembic user is not confused.
context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
