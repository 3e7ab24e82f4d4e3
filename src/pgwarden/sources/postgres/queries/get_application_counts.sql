-- get_application_counts: client sessions per application_name right now, pgwarden's own session left out (for budget discovery).
select coalesce(application_name, '') as application, count(*)::int as sessions
from pg_stat_activity
where backend_type = 'client backend'
  and pid <> pg_backend_pid()
group by 1
