-- get_new_sessions: client sessions that started after a given instant (for churn sampling).
select pid, application_name
from pg_stat_activity
where backend_type = 'client backend'
  and backend_start > %(since)s
  and pid <> pg_backend_pid()
