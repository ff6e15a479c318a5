# What `edict doctor` asks HOST, in one round trip: `EDICT-key value` lines after a marker
# line (a login banner may come before it, which the quiet-shell check reports). "$1": the
# places nix may be off the PATH; "$2": the expression of a trivial build no store has.
printf 'EDICT-DOCTOR-BEGIN\n';
nix=$(command -v nix);
printf 'EDICT-path-nix %s\n' "$nix";
# Only there, as Nix's own remote builds would look (the PATH change stays in the $(…)).
# shellcheck disable=SC2030
[ -n "$nix" ] || nix=$(PATH=$1 && command -v nix);
printf 'EDICT-nix %s\n' "$nix";
if [ -n "$nix" ]; then
  printf 'EDICT-version %s\n' "$("$nix" --version 2>/dev/null | head -n 1)";
  # Its settings (`show-config`, or `config show` where that was dropped).
  { "$nix" --extra-experimental-features nix-command show-config 2>/dev/null ||
    "$nix" --extra-experimental-features nix-command config show 2>/dev/null; } |
    grep -E '^(experimental-features|extra-platforms) *=' | sed 's/^/EDICT-setting /';
  printf 'EDICT-system %s\n' "$("$nix" --extra-experimental-features nix-command eval --impure --raw --expr builtins.currentSystem 2>/dev/null)";
  b=$("${nix%/*}/nix-build" --no-out-link --option substitute false -E "$2" 2>&1);
  s=$?;
  printf 'EDICT-build %s %s\n' "$s" "$(printf '%s\n' "$b" | tail -n 1)";
fi;
# shellcheck disable=SC2031 # the places come after the PATH, as a run adds them
PATH="$PATH:$1";
printf 'EDICT-rsync %s\n' "$(command -v rsync)";
printf 'EDICT-rsyncv %s\n' "$(rsync --version 2>/dev/null | head -n 1)"
