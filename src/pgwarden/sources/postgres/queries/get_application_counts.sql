-- get_application_counts: client sessions per application_name right now, pgwarden's own session left out (for budget discovery); sessions of other roles hidden from a role without pg_monitor (backend_type NULL, application_name visible) count when attached to a database, as Session.is_client_backend counts them, and are counted in hidden.
select coalesce(application_name, '') as application, count(*)::int as sessions,
       (count(*) filter (where backend_type is null))::int as hidden
from pg_stat_activity
where (backend_type = 'client backend' or backend_type is null and datid is not null)
  and pid <> pg_backend_pid()
group by 1
