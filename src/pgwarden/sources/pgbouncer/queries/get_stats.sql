-- get_stats: per database: totals since start and averages over the last stats_period (times in microseconds).
SHOW STATS
