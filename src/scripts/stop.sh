# Stops the command whose pid is in the file "$1", if that file is there: the command
# removes it when it ends, so a stale pid is never signalled. SIGINT to its process group
# (as a terminal's Ctrl-C would), then SIGKILL if it is still there after 5 s. No
# `kill --`: dash rejects it.
# (Every script here is sent as one line, its comments left out and its lines joined by
# spaces: each command ends in `;` unless the next line continues it.)
pid=$(cat "$1" 2>/dev/null) || exit 0;
pg=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ');
[ -n "$pg" ] || pg=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f3);
if [ -n "$pg" ] && [ "$pg" != 0 ]; then t=-$pg; else t=$pid; fi;
kill -INT "$t" 2>/dev/null;
i=0;
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do
  sleep 0.1;
  i=$((i + 1));
done;
kill -KILL "$t" 2>/dev/null;
true
