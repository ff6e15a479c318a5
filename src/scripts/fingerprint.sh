# Prints a fingerprint of the mirror "$1": every entry's path, type and mode, each file's
# size, mtime, ctime and inode, each symlink's target, in the order of one walk (the same
# for a directory nothing changed), so that any write, rename, chmod, new or removed entry
# changes it. A git mirror's own index ("$2" = git) is left out (HOST rewrites it before
# every run, see adopt_index.sh), and so are a directory's times (they move with that).
# Prints nothing when anything fails (an unreadable directory, no GNU find -printf or no
# sha256sum, as on BSD userlands): the mirror is then never taken as unchanged. No single
# quote and no `!` in here: this text travels inside quoting (a parameter of prepare.sh,
# stamp.sh, restamp.sh), and is named on `-v` only as long as it is quoted alike.
cd "$1" 2>/dev/null || exit 0;
command -v sha256sum >/dev/null || exit 0;
index=./.edict-no-such-entry;
[ "$2" = git ] && index=./.git/index;
t=$(mktemp 2>/dev/null) || exit 0;
if find . -path "$index" -prune -o -type d -printf "d %m %p\0" -o -type l -printf "l %p\0%l\0" -o -printf "%y %m %s %T@ %C@ %i %p\0" >"$t" 2>/dev/null &&
  s=$(sha256sum <"$t"); then
  echo "${s%% *}";
fi;
rm -f "$t"
