# Before the command, the mirrors as sent: for each triple MIRROR LOCAL STAMP after the
# fingerprint script "$1", writes to STAMP the fingerprint LOCAL of the source it was made
# from and the mirror's own (see unchanged.sh); removes STAMP where that cannot be had.
fp=$1;
shift;
while [ "$#" -ge 3 ]; do
  m=$(sh -c "$fp" sh "$1");
  if [ -n "$m" ] && printf "%s %s\n" "$2" "$m" >"$3.new" && mv -f "$3.new" "$3"; then
    :;
  else
    rm -f "$3" "$3.new";
  fi;
  shift 3;
done;
true
