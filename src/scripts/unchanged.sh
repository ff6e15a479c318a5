# Once the run holds its mirrors' locks: for each triple NAME KIND LOCAL after edict's
# cache "$2", names NAME in one line `EDICT-same NAME…` when the mirror's stamp (see
# stamp.sh) says it was made from a source whose fingerprint was LOCAL, as the source's is
# now, and the mirror's fingerprint (the script "$1", for a mirror of KIND) is still the
# one recorded then: nothing changed it since. edict then sends nothing for it.
fp=$1;
c=$2;
shift 2;
same=;
while [ "$#" -ge 3 ]; do
  s="$c/mirrors/$1.stamp";
  if [ -f "$s" ] && read -r l m <"$s" && [ "$l" = "$3" ] && [ -n "$m" ] &&
    [ "$(sh -c "$fp" sh "$c/mirrors/$1" "$2")" = "$m" ]; then
    same="$same $1";
  fi;
  shift 3;
done;
[ -z "$same" ] || echo "EDICT-same$same";
true
