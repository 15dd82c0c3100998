# Shared by the reproduce scripts (sourced): settings given as words, e.g. STEPS="full_face long", each checked
# before hours of work start, so a typo stops the script at once rather than after the steps before it.

die() { echo "${0##*/}: $*" >&2; exit 2; }

# words ARRAY NAME KIND WHEN_EMPTY WORD...: split the environment variable NAME (all the WORDs, in order, when it
# is unset) into ARRAY; stop when it is empty (WHEN_EMPTY says why that is an error) or holds a word that is not a
# WORD (KIND names what a word is, for the message). `set -f`: a '*' in it is a typo, not a file pattern.
words() {
  local -n into=$1
  local name=$2 kind=$3 when_empty=$4 word allowed
  shift 4
  set -f
  if [[ -v $name ]]; then read -ra into <<< "${!name}"; else into=("$@"); fi
  set +f
  ((${#into[@]})) || die "$name is empty: $when_empty"
  printf -v allowed '%s, ' "$@"
  for word in "${into[@]}"; do
    has "$word" "$@" || die "unknown $kind '$word' in $name (${allowed%, })"
  done
}

# has WORD ARRAY_ITEM...: whether WORD is one of the items.
has() {
  local word=$1
  shift
  [[ " $* " == *" $word "* ]]
}
