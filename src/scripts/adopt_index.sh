# In the mirror "$1" before nix runs: make HOST's own .git/index match the one sent as
# .git/edict-index, keeping HOST's file stats for entries that did not change, so git (and
# nix through libgit2) need not re-read and hash every tracked file. `read-tree --reset`
# keeps the stats of unchanged entries (`-m` would refuse: rsync has just changed files
# under it) and `update-index --refresh` hashes only what rsync rewrote. When that cannot
# reproduce the index exactly (intent-to-add or conflicted entries, no git), the copy is
# used. write-tree may add a cache to the index it reads, so it reads a scratch copy: the
# sent copy must stay as sent, or rsync would send it again next time.
cd "$1" 2>/dev/null && [ -f .git/edict-index ] || exit 0;
i=.git/edict-index;
{
  if command -v git >/dev/null && cp "$i" "$i.w" &&
    t=$(GIT_INDEX_FILE=$i.w git -c core.fsmonitor=false write-tree) &&
    git -c core.fsmonitor=false read-tree --reset "$t" &&
    [ "$(git -c core.fsmonitor=false ls-files -s -t)" = "$(GIT_INDEX_FILE=$i git -c core.fsmonitor=false ls-files -s -t)" ]; then
    git -c core.fsmonitor=false update-index -q --refresh >/dev/null;
  else
    cp "$i" .git/index;
  fi;
  rm -f "$i.w";
} 2>/dev/null;
true
