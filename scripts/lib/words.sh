# Shared by the reproduce scripts (sourced): settings given as words, e.g. STEPS="full_face long", each checked
# before hours of work start, so a typo stops the script at once rather than after the steps before it.

die() { echo "${0##*/}: $*" >&2; exit 2; }

# words ARRAY NAME KIND WHEN_EMPTY WORD...: split the environment variable NAME (all the WORDs, in order, when it
# is unset) at blanks and newlines into ARRAY; stop when it is empty (WHEN_EMPTY says why that is an error) or
# holds a word that is not a WORD (KIND names what a word is, for the message). Globbing is off while it splits:
# a '*' in it is a typo, not a file pattern. ARRAY must not be named like the locals here (_words_*).
words() {
  local -n _words_into=$1
  local _words_name=$2 _words_kind=$3 _words_empty=$4 _words_word _words_allowed _words_glob=+f
  shift 4
  if [[ $- == *f* ]]; then _words_glob=-f; fi  # globbing put back as the caller had it
  set -f
  if [[ -v $_words_name ]]; then
    read -rd '' -a _words_into <<< "${!_words_name}" || true  # -d '': every line, not only the first
  else
    _words_into=("$@")
  fi
  set "$_words_glob"
  ((${#_words_into[@]})) || die "$_words_name is empty: $_words_empty"
  printf -v _words_allowed '%s, ' "$@"
  for _words_word in "${_words_into[@]}"; do
    has "$_words_word" "$@" || die "unknown $_words_kind '$_words_word' in $_words_name (${_words_allowed%, })"
  done
}

# has WORD ITEM...: whether WORD is one of the items (compared one by one: whatever IFS is).
has() {
  local word=$1 item
  shift
  for item; do
    [[ $item == "$word" ]] && return 0
  done
  return 1
}
