# In the holder's shell: runs the script "$2" with the words after it, stdin closed, its
# output gathered in the run dir "$1" and sent in one write (each printf would be its own
# packet), then the end marker. Straight through if that file cannot be written (a full
# disk). The scripts asked this way always succeed, so a failure is the file's.
out="$1/out";
s=$2;
shift 2;
if sh -c "$s" sh "$@" </dev/null >"$out" && printf '\0EDICT-END\0' >>"$out"; then
  cat "$out";
else
  sh -c "$s" sh "$@" </dev/null;
  printf '\0EDICT-END\0';
fi
