#!/bin/sh
# A sample dropper for pushagent: puts one CSV export into the drop folder the safe way.
#
#   crm-export.sh DROP_DIR SEGMENT [FILE]
#
# Copies FILE (or standard input) to DROP_DIR/SEGMENT/<UTC time>-<pid>.csv. The data is first
# written under a hidden temporary name (.<name>.part, which pushagent ignores) in the same
# folder, then renamed into place: a rename is atomic, so the agent never sees a half-written
# file, and picks the file up at once instead of waiting for it to settle.
#
# SEGMENT is a producerSegmentID, a producerSegmentIDString or a name under segments: in the
# agent's config. Plug in your real export, preferably into a file first, e.g.
#
#   psql -At -c "\copy (SELECT email AS \"Email\" FROM vip) TO '/tmp/vip.csv' CSV HEADER" \
#     && crm-export.sh /var/lib/pushagent/drop vip_customers /tmp/vip.csv
#
# Reading standard input works too, but POSIX sh cannot see that a program earlier in a pipe
# failed halfway (no pipefail): a file written first and checked by its exit status is safer.
set -eu

usage() {
    echo "usage: $0 DROP_DIR SEGMENT [FILE]" >&2
    exit 2
}

[ "$#" -ge 2 ] && [ "$#" -le 3 ] || usage
drop_dir=$1
segment=$2
source_file=${3:--}

case $segment in
    "" | */* | .*) echo "$0: SEGMENT must be a plain name, got '$segment'" >&2; exit 2 ;;
esac
[ -d "$drop_dir" ] || { echo "$0: drop folder $drop_dir does not exist" >&2; exit 1; }

target_dir=$drop_dir/$segment
mkdir -p "$target_dir"
name=$(date -u +%Y%m%dT%H%M%SZ)-$$.csv
partial=$target_dir/.$name.part
target=$target_dir/$name

# Whatever happens before the rename, leave no temporary file behind.
trap 'rm -f "$partial"' EXIT
trap 'exit 1' HUP INT TERM

if [ "$source_file" = "-" ]; then
    cat > "$partial"
else
    cat -- "$source_file" > "$partial"
fi

if [ ! -s "$partial" ]; then
    echo "$0: the export is empty; nothing dropped" >&2
    exit 1
fi

# Same folder, so the same filesystem: mv is a rename(2), atomic for the agent.
mv -- "$partial" "$target"
trap - EXIT
echo "$target"
