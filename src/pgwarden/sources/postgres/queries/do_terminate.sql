-- do_terminate: terminate one client backend only if it is still the session that was chosen (same pid, backend_start, state and state_change); returns whether it hit.
select coalesce((
    select pg_terminate_backend(a.pid)
    from pg_stat_activity a
    where a.pid = %(pid)s
      and a.backend_type = 'client backend'
      and a.backend_start = %(backend_start)s
      and a.state = %(state)s
      and a.state_change = %(state_change)s
), false) as hit
