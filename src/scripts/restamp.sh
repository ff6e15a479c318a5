# After a run made result links in a plain directory here (which nix reads whole, links
# included): the same links in its mirror "$2" there, with a new stamp "$4" for the source
# now ("$6") and the mirror with them, so that the next run sends nothing. Only when the
# mirror is still exactly as stamped before the command from the source as it was then
# ("$5"); otherwise nothing is done and the next run sends as usual. "$1": the fingerprint
# script, "$3": the mirror's kind; then pairs NAME TARGET, NAME relative to the mirror.
fp=$1;
m=$2;
kind=$3;
s=$4;
was=$5;
now=$6;
shift 6;
read -r l f <"$s" 2>/dev/null || exit 0;
[ "$l" = "$was" ] && [ -n "$f" ] && [ "$(sh -c "$fp" sh "$m" "$kind")" = "$f" ] || exit 0;
while [ "$#" -ge 2 ]; do
  ln -sfn "$2" "$m/$1" || { rm -f "$s"; exit 0; };
  shift 2;
done;
f=$(sh -c "$fp" sh "$m" "$kind");
if [ -n "$f" ] && printf "%s %s\n" "$now" "$f" >"$s.new" && mv -f "$s.new" "$s"; then
  :;
else
  rm -f "$s" "$s.new";
fi;
true
