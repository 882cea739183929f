package schemadump

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"strings"

	"github.com/sqldlm/sqldlm/migrations"
)

var (
	// definerRE matches the DEFINER clause of SHOW CREATE output: it names the
	// account that migrated, not part of the schema.
	definerRE = regexp.MustCompile(" DEFINER=`(?:[^`]|``)*`@`(?:[^`]|``)*`")
	// autoIncrementRE matches the table's next AUTO_INCREMENT value: data,
	// not schema.
	autoIncrementRE = regexp.MustCompile(` AUTO_INCREMENT=\d+`)
)

// dumpMySQL renders the current database's tables (SHOW CREATE TABLE),
// views (SHOW CREATE VIEW) and routines (SHOW CREATE PROCEDURE/FUNCTION),
// without DEFINER clauses, AUTO_INCREMENT counters or the database's name.
func dumpMySQL(ctx context.Context, q *sql.DB) (string, map[string]string, error) {
	var version, database string
	if err := q.QueryRowContext(ctx, `SELECT VERSION(), DATABASE()`).Scan(&version, &database); err != nil {
		return "", nil, err
	}
	server := "MySQL"
	if strings.Contains(strings.ToLower(version), "mariadb") {
		server = "MariaDB"
	}
	if major, minor, ok := majorMinor(version); ok {
		server += " " + major + "." + minor
	}
	quotedDB := "`" + strings.ReplaceAll(database, "`", "``") + "`."
	clean := func(def string) string {
		def = definerRE.ReplaceAllString(def, "")
		def = autoIncrementRE.ReplaceAllString(def, "")
		return strings.ReplaceAll(def, quotedDB, "")
	}

	objects := map[string]string{}
	tables, err := queryPairs(ctx, q, `
		SELECT table_name, table_type FROM information_schema.tables
		 WHERE table_schema = DATABASE() AND table_name <> ?
		 ORDER BY table_name`, migrations.VersionTable)
	if err != nil {
		return "", nil, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		what := "TABLE"
		if t[1] == "VIEW" {
			what = "VIEW"
		}
		def, err := showCreate(ctx, q, what, t[0])
		if err != nil {
			return "", nil, err
		}
		objects[t[0]] = clean(def) + ";"
	}

	routines, err := queryPairs(ctx, q, `
		SELECT routine_name, routine_type FROM information_schema.routines
		 WHERE routine_schema = DATABASE()
		 ORDER BY routine_name`)
	if err != nil {
		return "", nil, fmt.Errorf("list routines: %w", err)
	}
	for _, r := range routines {
		def, err := showCreate(ctx, q, r[1], r[0])
		if err != nil {
			return "", nil, err
		}
		objects[r[0]] = clean(def) + ";"
	}
	return server, objects, nil
}

// showCreate returns the CREATE statement of SHOW CREATE <what> name: the
// column whose name starts with "Create" (its position differs by kind).
func showCreate(ctx context.Context, q *sql.DB, what, name string) (string, error) {
	rows, err := q.QueryContext(ctx, "SHOW CREATE "+what+" `"+strings.ReplaceAll(name, "`", "``")+"`")
	if err != nil {
		return "", fmt.Errorf("show create %s %s: %w", strings.ToLower(what), name, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return "", err
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return "", err
		}
		return "", fmt.Errorf("show create %s %s: no row", strings.ToLower(what), name)
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return "", err
	}
	for i, c := range cols {
		if strings.HasPrefix(c, "Create ") {
			if !vals[i].Valid {
				return "", fmt.Errorf("show create %s %s: no definition (missing privilege?)", strings.ToLower(what), name)
			}
			return vals[i].String, nil
		}
	}
	return "", fmt.Errorf("show create %s %s: no Create column in %v", strings.ToLower(what), name, cols)
}

var versionRE = regexp.MustCompile(`^(\d+)\.(\d+)`)

func majorMinor(version string) (major, minor string, ok bool) {
	m := versionRE.FindStringSubmatch(version)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}
