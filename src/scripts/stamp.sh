# Before the command, the mirrors as sent: for each quadruple MIRROR KIND LOCAL STAMP after
# the fingerprint script "$1", writes to STAMP the fingerprint LOCAL of the source it was
# made from and the mirror's own (see unchanged.sh); removes STAMP where that cannot be had.
fp=$1;
shift;
while [ "$#" -ge 4 ]; do
  m=$(sh -c "$fp" sh "$1" "$2");
  if [ -n "$m" ] && printf "%s %s\n" "$3" "$m" >"$4.new" && mv -f "$4.new" "$4"; then
    :;
  else
    rm -f "$4" "$4.new";
  fi;
  shift 4;
done;
true
