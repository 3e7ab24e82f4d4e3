-- get_activity: every backend but our own in the order of their pids, ages in seconds measured at one instant (now());
-- columns are named as the fields of pgwarden.sources.postgres.Session (rows bind by name).
-- blocking pids are looked up only for sessions waiting on a lock (pg_blocking_pids is not free).
select
    a.pid,
    a.datname as database,
    a.usename as "user",
    coalesce(a.application_name, '') as application,
    host(a.client_addr) as client_addr,
    a.client_port,
    a.backend_type,
    a.state,
    a.backend_start,
    a.xact_start,
    a.query_start,
    a.state_change,
    extract(epoch from now() - a.backend_start)::float8 as backend_age,
    extract(epoch from now() - a.xact_start)::float8 as xact_age,
    extract(epoch from now() - a.query_start)::float8 as query_age,
    extract(epoch from now() - a.state_change)::float8 as state_age,
    a.wait_event_type,
    a.wait_event,
    left(a.query, %(query_chars)s) as query,
    case when a.wait_event_type = 'Lock' then pg_blocking_pids(a.pid) end as blocking_pids,
    coalesce(r.rolsuper, false) as is_superuser,
    coalesce(r.rolreplication, false) as is_replication_role
from pg_stat_activity a
left join pg_roles r on r.oid = a.usesysid
where a.pid <> pg_backend_pid()
order by a.pid
