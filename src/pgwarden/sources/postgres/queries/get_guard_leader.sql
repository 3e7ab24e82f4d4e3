-- get_guard_leader: backend pid of the session holding the acting guard's advisory lock in this database, if any.
select l.pid
from pg_locks l
where l.locktype = 'advisory'
  and l.granted
  and l.database = (select d.oid from pg_database d where d.datname = current_database())
  and l.classid = %(classid)s::oid
  and l.objid = %(objid)s::oid
  and l.objsubid = 1
limit 1
