-- get_guard_target: the session now behind a pid (after a miss, to say why: gone, pid reused, state changed).
select a.backend_start, a.state, a.state_change, a.backend_type
from pg_stat_activity a
where a.pid = %(pid)s
