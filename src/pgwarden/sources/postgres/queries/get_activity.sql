-- get_activity: every backend (pids NULL) or the backends with the given pids (a summary snapshot's notable sessions), our own left out, in the order of their pids; ages in seconds measured at one instant (now()).
-- columns are named as the fields of pgwarden.sources.postgres.Session (rows bind by name); pg_stat_activity is this same join of pg_stat_get_activity(NULL) to pg_database and the roles.
-- blocking pids are looked up only for sessions waiting on a lock (pg_blocking_pids is not free).
-- pg_stat_get_activity(pid) finds one backend without building a row for every other, but walks them all: a hundred pids or more cost less as one pass over pg_stat_get_activity(NULL).
with a as (
    select a.*
    from unnest(%(pids)s::int[]) as p (pid)
    cross join lateral pg_stat_get_activity(p.pid) as a
    where cardinality(%(pids)s::int[]) < 100
    union all
    select a.*
    from pg_stat_get_activity(NULL) as a
    where %(pids)s::int[] is null
       or cardinality(%(pids)s::int[]) >= 100 and a.pid in (select unnest(%(pids)s::int[]))
)
select
    a.pid,
    d.datname as database,
    u.rolname as "user",
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
    coalesce(u.rolsuper, false) as is_superuser,
    coalesce(u.rolreplication, false) as is_replication_role
from a
left join pg_database d on d.oid = a.datid
left join pg_roles u on u.oid = a.usesysid
where a.pid <> pg_backend_pid()
order by a.pid
