-- get_config: every setting (key, value, default, changeable).
SHOW CONFIG
