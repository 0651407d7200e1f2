# Sourced by boards/build.sh and boards/ggml.sh: read a top-level string
# field of a board profile (`target`, `arm_arch`) without a TOML parser.
# Usage: profile_field PROFILE.toml KEY
profile_field() { sed -n "s/^$2 *= *\"\(.*\)\"/\1/p" "$1" | head -1; }
