-- get_server (PostgreSQL 16+): as get_server, plus membership of pg_use_reserved_connections.
select
    current_setting('server_version_num')::int as version_num,
    current_setting('server_version') as version,
    pg_backend_pid() as self_pid,
    now() as taken_at,
    current_user as role,
    r.rolsuper as is_superuser,
    pg_has_role(current_user, 'pg_monitor', 'member') as has_pg_monitor,
    pg_has_role(current_user, 'pg_signal_backend', 'member') as has_pg_signal_backend,
    pg_has_role(current_user, 'pg_use_reserved_connections', 'member')
        as has_pg_use_reserved_connections,
    pg_is_in_recovery() as in_recovery
from pg_roles r
where r.rolname = current_user
