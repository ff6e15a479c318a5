# Prints a fingerprint of the mirror "$1": every entry's path, type and mode, each file's
# size, mtime, ctime and inode, each symlink's target, so that any write, rename, chmod,
# new or removed entry changes it. HOST's own git index is left out (it is rewritten
# before every run, see adopt_index.sh), and so are a directory's times (they move with
# that). Prints nothing where GNU find's -printf or sha256sum is missing (BSD userlands):
# the mirror is then never taken as unchanged. No single quote and no `!` in here: this
# text travels inside three levels of quoting.
cd "$1" 2>/dev/null || exit 0;
command -v sha256sum >/dev/null || exit 0;
find . -maxdepth 0 -printf "" 2>/dev/null || exit 0;
{
  find . -type d -printf "d %m %p\0" &&
    find . -type l -printf "l %p\0%l\0" &&
    find . -not -type d -not -type l -not -path ./.git/index -not -path ./.git/index.lock -not -path ./.git/edict-index.w -printf "%y %m %s %T@ %C@ %i %p\0";
} 2>/dev/null | LC_ALL=C sort -z | sha256sum | cut -d " " -f1
