# Before the command runs: for each pair INDEX MIRROR after the run dir "$1", the files and
# symlinks of MIRROR outside .git (NUL-separated, relative) into "$1/before-INDEX", for
# inspect.sh to tell what the command deleted.
run=$1;
shift;
while [ "$#" -ge 2 ]; do
  (cd "$2" && find . -path ./.git -prune -o \( -type f -o -type l \) -print0 >"$run/before-$1") 2>/dev/null;
  shift 2;
done;
true
