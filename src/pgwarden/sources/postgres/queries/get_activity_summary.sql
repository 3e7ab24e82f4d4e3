-- get_activity_summary: every backend but our own counted by database, user, application, backend type and state (the fields of pgwarden.sources.postgres.SessionGroup: the oldest ages in seconds at now()), with the pids of the notable sessions (pgwarden.sources.postgres.Notable) and the pids, client addresses and ages of those kept in brief (ClientBrief: idle past idle_after, young, without application_name); rows bind by column name.
-- pg_stat_get_activity(NULL) is what pg_stat_activity reads, without its per-row joins: names are joined to the groups. Cutoffs are a millisecond lenient (the rules decide on exact ages).
-- The arrays are in no particular order (an ordered aggregate sorts every group: a third of the cost); the brief_* arrays share one filter and are filled in one pass, so their elements pair up.
select
    d.datname as database,
    u.rolname as "user",
    g.application,
    g.backend_type,
    g.state,
    g.sessions,
    extract(epoch from now() - g.oldest_state_change)::float8 as oldest_state_age,
    extract(epoch from now() - g.oldest_query_start)::float8 as oldest_query_age,
    extract(epoch from now() - g.oldest_xact_start)::float8 as oldest_xact_age,
    g.notable_pids,
    g.brief_pids,
    g.brief_client_addrs,
    g.brief_backend_ages,
    g.brief_state_ages
from (
    select
        a.datid,
        a.usesysid,
        a.application,
        a.backend_type,
        a.state,
        count(*)::int as sessions,
        min(a.state_change) as oldest_state_change,
        min(a.query_start) as oldest_query_start,
        min(a.xact_start) as oldest_xact_start,
        array_agg(a.pid) filter (where a.notable) as notable_pids,
        array_agg(a.pid) filter (where a.brief) as brief_pids,
        array_agg(host(a.client_addr)) filter (where a.brief) as brief_client_addrs,
        array_agg(extract(epoch from now() - a.backend_start)::float8) filter (where a.brief)
            as brief_backend_ages,
        array_agg(extract(epoch from now() - a.state_change)::float8) filter (where a.brief)
            as brief_state_ages
    from (
        select
            a.*,
            coalesce(a.application_name, '') as application,
            a.state in ('idle in transaction', 'idle in transaction (aborted)')
                and a.state_change <= c.idle_in_transaction
            or a.state = 'active' and a.query_start <= c.long_query
            or a.wait_event_type = 'Lock' as notable,
            a.state = 'idle' and a.state_change <= c.idle
            or a.backend_start >= c.young
            or coalesce(a.application_name, '') = '' as brief
        from pg_stat_get_activity(NULL) as a
        cross join (
            select
                now() - make_interval(secs => %(idle_in_transaction_after)s) + interval '1 ms'
                    as idle_in_transaction,
                now() - make_interval(secs => %(long_query_after)s) + interval '1 ms'
                    as long_query,
                now() - make_interval(secs => %(idle_after)s) + interval '1 ms' as idle,
                now() - make_interval(secs => %(young_age)s) - interval '1 ms' as young
        ) as c
        where a.pid <> pg_backend_pid()
    ) as a
    group by 1, 2, 3, 4, 5
) as g
left join pg_database d on d.oid = g.datid
left join pg_roles u on u.oid = g.usesysid
