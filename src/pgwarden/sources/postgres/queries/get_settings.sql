-- get_settings: the connection-related settings pgwarden reasons about, by name.
select name, setting, unit
from pg_settings
where name = any(%(names)s)
