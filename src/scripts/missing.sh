# For each path in "$@", in order: `here` when it exists, else `missing`.
for p in "$@"; do
  if [ -e "$p" ]; then echo here; else echo missing; fi;
done
