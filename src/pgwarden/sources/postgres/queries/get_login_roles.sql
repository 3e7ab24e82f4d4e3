-- get_login_roles: which of the named roles exist and whether they may log in (pg_roles: readable by every role, unlike pg_authid).
select rolname as name, rolcanlogin as can_login
from pg_roles
where rolname = any(%(names)s)
