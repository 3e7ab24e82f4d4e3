-- get_guard_lock: try to become the acting guard: a session-level advisory lock on a fixed key, held until this session ends.
select pg_try_advisory_lock(%(key)s::bigint) as acquired
