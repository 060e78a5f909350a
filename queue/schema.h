/* schema.h - the SQL migrations in schema/, compiled in by schema/embed.sh. */
#ifndef WATCHRTC_SCHEMA_H
#define WATCHRTC_SCHEMA_H

struct schema_migration {
	int version;       /* PRAGMA user_version once this migration ran */
	const char *name;
	const char *sql;
};

extern const struct schema_migration schema_migrations[];
extern const unsigned schema_migration_count;

#endif
