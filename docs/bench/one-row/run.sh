#!/bin/sh
# run.sh SCRIPT CLIENTS SECONDS
psql -h 127.0.0.1 -U postgres -d "${DB:-proto}" -qc "VACUUM ANALYZE sqldlm_locks, sqldlm_holders, sqldlm_leases, floor_locks" >/dev/null
pgbench -h 127.0.0.1 -U postgres -n -M prepared -f "$1" -c "$2" -j 2 -T "$3" "${DB:-proto}" 2>&1 | awk -v s="$1" -v c="$2" '/^tps/ {printf "%-10s c=%-3s %s\n", s, c, $3}'
