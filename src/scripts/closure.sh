# The closure of the store paths after "$1" (HOST's nix-store): each path and the size of
# its NAR, tab-separated. Two nix-store runs however many paths (xargs keeps the order);
# nothing when the query fails.
n=$1;
shift;
t=$(mktemp) || exit 1;
# shellcheck disable=SC2094 # both read "$t"
"$n" --query --requisites "$@" >"$t" && xargs "$n" --query --size <"$t" | paste "$t" -;
rm -f "$t"
