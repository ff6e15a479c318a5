# After the command ran, what it left, as NUL-separated records: with "$2" = 1, each result
# link in the run dir "$1"'s links/ (`L NAME TARGET`); then for each pair INDEX MIRROR that
# follows, `S INDEX`, the files the snapshot had that are gone, `C` and the files and
# symlinks outside .git with a ctime after "$1/start", `G` and what moved in .git's refs,
# `E`. xargs -0 and `[ -e ]` work the same in GNU and BSD userlands.
run=$1;
links=$2;
shift 2;
if [ "$links" = 1 ] && cd "$run/links" 2>/dev/null; then
  for l in */result*; do
    [ -L "$l" ] && printf 'L\0%s\0%s\0' "$l" "$(readlink "$l")";
  done;
fi;
while [ "$#" -ge 2 ]; do
  if cd "$2" 2>/dev/null; then
    b="$run/before-$1";
    printf 'S\0%s\0' "$1";
    # shellcheck disable=SC2016 # the inner script is sh's, its $f its own
    [ -f "$b" ] && xargs -0 sh -c 'for f; do [ -e "$f" ] || [ -L "$f" ] || printf "%s\0" "$f"; done' sh <"$b";
    printf 'C\0';
    find . -path ./.git -prune -o \( -type f -o -type l \) -cnewer "$run/start" -print0;
    printf 'G\0';
    [ -d .git ] && find .git/HEAD .git/packed-refs .git/refs -cnewer "$run/start" -print0 2>/dev/null;
    printf 'E\0';
  fi;
  shift 2;
done;
exit 0
