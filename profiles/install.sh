#!/usr/bin/env bash
# Make `snakemake --profile slurm` (and the variants, e.g. `--profile slurm-gres`) work from any
# directory: link profiles/slurm* into Snakemake's per-user profile directory,
# ${XDG_CONFIG_HOME:-~/.config}/snakemake/<name>.
#
#   bash profiles/install.sh            # link every SLURM profile of this checkout
#   bash profiles/install.sh --dry-run  # only say what it would do
#
# Idempotent: a link that already points here is left alone. It never replaces anything else:
# an existing profile of the same name (a directory, or a link to another checkout) stops it
# with a message, and nothing is changed. The links follow this checkout, so edit the site
# settings (partitions, accounts, GPU models) in profiles/slurm*/config.yaml here.
set -euo pipefail

dry=0
case "${1:-}" in
    "") ;;
    --dry-run|-n) dry=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
dest="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"

profiles=()
for dir in "$here"/slurm*/; do
    dir=${dir%/}
    [ -f "$dir/config.yaml" ] || [ -f "$dir/profile.yaml" ] || continue
    profiles+=("$dir")
done
[ ${#profiles[@]} -gt 0 ] || { echo "install.sh: no profiles/slurm*/ found in $here" >&2; exit 1; }

# check everything first, so a conflict leaves nothing half done
conflicts=0
for dir in "${profiles[@]}"; do
    link="$dest/$(basename "$dir")"
    if [ -L "$link" ]; then
        target=$(readlink -f "$link" || true)
        if [ "$target" != "$dir" ]; then
            echo "install.sh: $link already links to ${target:-a missing path}, not $dir;" \
                 "remove it (rm $link) or use --profile $dir" >&2
            conflicts=1
        fi
    elif [ -e "$link" ]; then
        echo "install.sh: $link exists and is not a link to this checkout; not replacing it" \
             "(move it away, or use --profile $dir)" >&2
        conflicts=1
    fi
done
[ "$conflicts" = 0 ] || exit 1

for dir in "${profiles[@]}"; do
    name=$(basename "$dir")
    link="$dest/$name"
    if [ -L "$link" ]; then
        echo "$name: already installed ($link -> $dir)"
        continue
    fi
    if [ "$dry" = 1 ]; then
        echo "$name: would link $link -> $dir"
        continue
    fi
    mkdir -p "$dest"
    ln -s "$dir" "$link"
    echo "$name: linked $link -> $dir"
done
[ "$dry" = 1 ] || echo "now: snakemake --profile ${profiles[0]##*/} ... (from any directory)"
