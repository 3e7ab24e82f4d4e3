-- do_guard_unlock: give up the acting guard's advisory lock (on a clean exit; ending the session does the same).
select pg_advisory_unlock(%(key)s::bigint) as released
