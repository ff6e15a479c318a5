# The holder of a run, whose end releases its locks and cleans up. "$1" is this script's own
# text, "$2" edict's cache there, "$3" the run dir, "$4" the findings to print once locked,
# "$5" the script that stops the command, "$6" a line that says which mirrors are as sent
# (see unchanged.sh; evaluated once locked, with the fingerprint script in
# EDICT_FINGERPRINT, exported by prepare.sh), and "$7" how many of the mirror names after
# them still need their flock:
# each is taken by running this script again under `flock` (in order), until none is left.
# Then it prints the findings and EDICT-locked, and runs a shell that reads edict's scripts
# (with the run dir in $r) until edict closes its end, also when edict was killed or its
# connection dropped. Then the cleanup: a command still running is stopped; the files it
# wrote in a mirror get an mtime of 1970, so that the next upload compares them anew
# (rsync's quick check, size and mtime, would keep a file the command rewrote with both
# unchanged, and HOST would go on seeing it); the lock directories that still name this
# shell are removed (without flock, see prepare.sh); the run dir goes last.
h=$1;
c=$2;
run=$3;
o=$4;
stop=$5;
check=$6;
k=$7;
shift 7;
if [ "$k" -gt 0 ]; then
  n=$1;
  shift;
  exec flock "$c/mirrors/$n.lock" sh -c "$h" sh "$h" "$c" "$run" "$o" "$stop" "$check" $((k - 1)) "$@" "$n";
fi;
[ -z "$check" ] || o=$(printf '%s\n' "$o"; eval "$check");
printf '%s\nEDICT-locked\n' "$o";
r=$run sh;
sh -c "$stop" sh "$run/pid";
for n; do
  (cd "$c/mirrors/$n" &&
    find . -path ./.git -prune -o -type f -cnewer "$run/start" -exec touch -t 197001020000 {} +) 2>/dev/null;
done;
if [ -f "$run/locks" ]; then
  while IFS= read -r d; do
    [ "$(cat "$d/pid" 2>/dev/null)" != $$ ] || rm -rf "$d";
  done <"$run/locks";
fi;
rm -rf "$run"
