# Before a run, in one round trip: find nix and rsync (on the PATH, then in the places "$1"
# a non-interactive login may not search), make the run dir "$3" in edict's cache "$2" and
# the mirrors named after the ninth parameter, clean up after dead runs, remove the
# mirrors unused for "$4" minutes (with the script "$5"), lock this run's mirrors (flock,
# else lock directories) and become the holder, the script "$6" (which stops a command
# with the script "$7", and tells which mirrors are as sent with the line "$8", which finds
# the fingerprint script "$9" in EDICT_FINGERPRINT). Prints
# `EDICT-key value` lines; `EDICT-waiting` while another run holds a lock. The names come
# sorted, so two runs that share two mirrors never hold one each.
# The first word out: that the link works (a kept connection may be one that died).
echo EDICT-alive;
places=$1;
PATH="$PATH:$places";
c=$2;
run="$c/runs/$3";
minutes=$4;
expire=$5;
hold=$6;
stop=$7;
check=$8;
EDICT_FINGERPRINT=$9;
export EDICT_FINGERPRINT;
shift 9;
nix=$(command -v nix);
# The findings go out in one write with EDICT-locked: one packet on the wire, not five.
v=$([ -n "$nix" ] && "$nix" --version 2>&1 | head -n 1);
o=$(printf 'EDICT-nix %s\nEDICT-version %s\nEDICT-rsync %s\nEDICT-rsyncv %s\nEDICT-cache %s\nEDICT-shell %s' "$nix" "$v" "$(command -v rsync)" "$(rsync --version 2>/dev/null | head -n 1)" "$c" "$SHELL");
# edict's cache there (mirrors with .git/config, run dirs) is for this user only; the umask
# stays inside the $(…), never reaching the holder or the command.
err=$(umask 077 && mkdir -p "$run/links" "$run/outputs" 2>&1 &&
  for n; do mkdir -p "$c/mirrors/$n" 2>&1 || exit 1; done) ||
  { printf '%s\nEDICT-error %s\n' "$o" "$err"; exit 1; };
chmod 700 "$c" 2>/dev/null;
# Scratch dirs of runs that died without cleaning up (edict killed with -9, a reboot).
find "$c/runs" -mindepth 1 -maxdepth 1 -mtime +2 -exec rm -rf {} + 2>/dev/null;
# This run's mirrors are used now (their mtime is their last use).
for n; do touch "$c/mirrors/$n" 2>/dev/null; done;
sh -c "$expire" sh "$places" "$c" "$minutes" >/dev/null 2>&1;
if command -v flock >/dev/null; then
  busy=;
  for n; do flock -n "$c/mirrors/$n.lock" true || busy=1; done;
  [ -z "$busy" ] || echo EDICT-waiting;
  exec sh -c "$hold" sh "$hold" "$c" "$run" "$o" "$stop" "$check" "$#" "$@";
fi;
# No flock (macOS, a BSD): a lock is a directory that mkdir makes for one run only, holding
# the pid of the shell that keeps it (this one, which becomes the holder). One whose holder
# is gone (killed with -9, the host rebooted) is taken over; one with no pid yet is its
# maker's for a minute. Taking one over is itself under a lock, and checked again there,
# so two waiting runs never both take the same one.
busy=;
for n; do
  d="$c/mirrors/$n.lockd";
  until mkdir "$d" 2>/dev/null; do
    [ -d "$d" ] || { printf '%s\nEDICT-error cannot make the lock %s\n' "$o" "$d"; exit 1; };
    p=$(cat "$d/pid" 2>/dev/null);
    if { [ -n "$p" ] && ! kill -0 "$p" 2>/dev/null; } ||
      { [ -z "$p" ] && [ -n "$(find "$d" -prune -mmin +1 2>/dev/null)" ]; }; then
      if mkdir "$d.break.lockd" 2>/dev/null; then
        q=$(cat "$d/pid" 2>/dev/null);
        if { [ -n "$q" ] && [ "$q" = "$p" ] && ! kill -0 "$q" 2>/dev/null; } ||
          { [ -z "$q" ] && [ -n "$(find "$d" -prune -mmin +1 2>/dev/null)" ]; }; then
          rm -rf "$d";
        fi;
        rmdir "$d.break.lockd";
        continue;
      fi;
      [ -z "$(find "$d.break.lockd" -prune -mmin +1 2>/dev/null)" ] || rmdir "$d.break.lockd" 2>/dev/null;
    fi;
    [ -n "$busy" ] || { busy=1; echo EDICT-waiting; };
    sleep 1;
  done;
  { echo $$ >"$d/pid" && printf '%s\n' "$d" >>"$run/locks"; } ||
    { rm -rf "$d"; printf '%s\nEDICT-error cannot write the lock %s\n' "$o" "$d"; exit 1; };
done;
exec sh -c "$hold" sh "$hold" "$c" "$run" "$o" "$stop" "$check" 0 "$@"
