# Removes the mirrors in "$2"/mirrors unused for more than "$3" minutes (all when "$3" is
# empty) and not locked by a run, printing `EDICT-gone NAME KB` for each. "$1": the places
# where flock may be off the PATH (on nix-darwin), so that runs and `edict gc` lock alike. It takes the
# runs' lock: flock where there is one, else the lock directory, holding its pid while it
# removes; a mirror is never removed under a run that holds it. flock's lock files stay:
# one removed under a waiting run would let a new run take another.
PATH="$PATH:$1";
for m in "$2"/mirrors/*/; do
  m=${m%/};
  case $m in *.lockd) continue ;; esac;
  if [ ! -d "$m" ] || [ -L "$m" ]; then continue; fi;
  if [ -n "$3" ] && [ -z "$(find "$m" -prune -mmin "+$3" 2>/dev/null)" ]; then continue; fi;
  k=$(du -sk "$m" 2>/dev/null | cut -f1);
  if command -v flock >/dev/null; then
    flock -n "$m.lock" rm -rf "$m" "$m.stamp" 2>/dev/null;
  elif mkdir "$m.lockd" 2>/dev/null; then
    echo $$ >"$m.lockd/pid";
    rm -rf "$m" "$m.stamp";
    rm -rf "$m.lockd";
  fi;
  [ ! -e "$m" ] && echo "EDICT-gone ${m##*/} ${k:-0}";
done;
true
