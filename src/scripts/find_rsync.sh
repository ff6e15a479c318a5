# For each directory in "$@" that has an rsync: its path and the first line of its
# `--version`, tab-separated.
for d in "$@"; do
  [ -x "$d/rsync" ] && printf '%s\t%s\n' "$d/rsync" "$("$d/rsync" --version 2>/dev/null | head -n 1)";
done;
true
