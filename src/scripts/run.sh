# The command itself: the words after the run dir "$1" and the working directory "$2",
# run from that directory. It may be one git does not track (an empty `build/`): it is not
# in the mirror, so it is made, and nix searches upward for the flake as it does here.
# `start` marks the moment the command begins: what it changes afterwards has a newer ctime
# (see inspect.sh). The command runs as a child, not exec'd, so that its pid file goes the
# moment it ends: the holder, when it ends early (edict killed, the connection dropped),
# stops a command whose pid file is still there. The trap keeps this shell alive through a
# Ctrl-C (the command still gets it) to pass its exit code on.
run=$1;
cwd=$2;
shift 2;
mkdir -p "$cwd" 2>/dev/null;
cd "$cwd" || exit 127;
{ echo $$ >"$run/pid"; true >"$run/start"; } 2>/dev/null;
trap true INT TERM HUP;
"$@";
rc=$?;
rm -f "$run/pid";
exit "$rc"
