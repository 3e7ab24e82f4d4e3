"""What pgwarden reads: :mod:`.postgres` (``pg_stat_activity``, settings, roles) and
:mod:`.pgbouncer` (PgBouncer's admin console). Each source turns one poll into frozen records
bound by column name; the doctor, the guard, the exporter and ``top`` are pure functions of them.
"""
