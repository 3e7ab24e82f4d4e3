-- get_sessions_total (PostgreSQL 14+): sessions ever established, over all databases.
select coalesce(sum(sessions), 0)::bigint as sessions_total
from pg_stat_database
