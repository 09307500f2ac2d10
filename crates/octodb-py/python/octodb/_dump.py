"""Connection.iterdump(): the SQL text that rebuilds a database, one statement at a time."""

from octodb import _octodb


def _ident(name):
    """A name as a double-quoted SQL identifier."""
    return '"{}"'.format(name.replace('"', '""'))


def _literal(text):
    """A value as a single-quoted SQL string."""
    return "'{}'".format(text.replace("'", "''"))


def _rows(connection, sql, *params):
    cursor = connection.cursor()
    # The app's row factory may make rows that cannot be unpacked; plain tuples here.
    cursor.row_factory = None
    return cursor.execute(sql, params).fetchall()


def _insert_statements(connection, table):
    """INSERT statements for every row of `table`, values written by SQLite's quote()."""
    columns = [info[1] for info in _rows(connection, "PRAGMA table_info({})".format(_ident(table)))]
    if not columns:
        return
    values = ",".join("'||quote({})||'".format(_ident(str(c))) for c in columns)
    query = "SELECT 'INSERT INTO {} VALUES({})' FROM {}".format(
        _ident(table).replace("'", "''"), values, _ident(table)
    )
    for (statement,) in _rows(connection, query):
        yield statement + ";"


# octodb's own tables (a node's keys, its log, its outbox): never part of the app's data.
_INTERNAL = "_octo_"


def iterdump(connection, filter=None):
    # `filter` (Python 3.13): a LIKE pattern the names of the objects dumped match.
    if filter is not None and not isinstance(filter, str):
        raise TypeError(f"filter must be str or None, not {type(filter).__name__}")
    matching = ' AND "name" LIKE ?' if filter else ""
    params = (filter,) if filter else ()
    yield "BEGIN TRANSACTION;"
    tables = _rows(
        connection,
        "SELECT name, type, sql FROM sqlite_master "
        "WHERE sql NOT NULL AND type == 'table'" + matching + " ORDER BY name",
        *params,
    )
    writable_schema = False
    has_sequence = False
    device = getattr(connection, "node_type", None) == "secondary"
    for name, _type, sql in tables:
        if name == "sqlite_sequence":
            # Restored last, once the tables it counts for exist.
            has_sequence = True
            continue
        if name == "sqlite_stat1":
            yield "ANALYZE sqlite_master;"
            continue
        if name.startswith("sqlite_") or name.startswith(_INTERNAL):
            continue
        if sql.startswith("CREATE VIRTUAL TABLE"):
            # A virtual table is recreated through the schema table (its module builds it).
            if not writable_schema:
                writable_schema = True
                yield "PRAGMA writable_schema=ON;"
            yield (
                "INSERT INTO sqlite_master(type,name,tbl_name,rootpage,sql)"
                "VALUES('table',{0},{0},0,{1});".format(_literal(name), _literal(sql))
            )
            continue
        if device:
            # Restorable into any SQLite: without the row_owner default only a device runs.
            sql = _octodb._as_primaries_wrote_it(sql)
        yield "{};".format(sql)
        yield from _insert_statements(connection, name)
    others = _rows(
        connection,
        "SELECT name, tbl_name, sql FROM sqlite_master "
        "WHERE sql NOT NULL AND type IN ('index', 'trigger', 'view')" + matching,
        *params,
    )
    for name, table, sql in others:
        if not (name.startswith(_INTERNAL) or table.startswith(_INTERNAL)):
            yield "{};".format(sql)
    if writable_schema:
        yield "PRAGMA writable_schema=OFF;"
    if has_sequence:
        yield 'DELETE FROM "sqlite_sequence";'
        yield from _insert_statements(connection, "sqlite_sequence")
    yield "COMMIT;"
