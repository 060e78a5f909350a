#!/bin/sh
# Turns schema/NNNN-name.sql files into queue/schema_sql.c: one migration per
# file, applied in order of NNNN, which is also the PRAGMA user_version the
# database has after that file.
set -e
echo '/* Generated from the files in schema/ by schema/embed.sh; do not edit. */'
echo '#include "schema.h"'
echo 'const struct schema_migration schema_migrations[] = {'
for f in "$@"; do
	base=$(basename "$f" .sql)
	ver=$(echo "$base" | sed 's/^0*\([0-9][0-9]*\)-.*/\1/')
	printf '\t{ %s, "%s",\n' "$ver" "$base"
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/\t  "/' -e 's/$/\\n"/' "$f"
	printf '\t},\n'
done
echo '};'
echo 'const unsigned schema_migration_count = sizeof schema_migrations / sizeof schema_migrations[0];'
