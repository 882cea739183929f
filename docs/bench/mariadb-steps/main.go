//go:build ignore

// Where an uncontended acquire+release pair's server CPU goes on MariaDB:
// one connection runs N pairs of one variant on one name, each statement
// its own commit, and the run reports pairs/s and mariadbd's CPU per pair
// (/proc/<pid>/stat, user + system, so the server's background threads
// count too). The variants take sqldlm_acquire apart and try the one-row
// grant; BENCHMARKS.md ("MariaDB: where an uncontended pair goes") has the
// results. Run on a database migrated by `sqldlm migrate up`, with nothing
// else running:
//
//	go run docs/bench/mariadb-steps/main.go -pid $(pidof mariadbd) -v v8
//
// The prototypes (procedures p_*, tables floor and ox) are created in that
// database; they measure cost only and are not safe lock operations. Run
// it from the repository's root (p_no1 and p_light are built from
// dialect/mysql/schema/sqldlm_acquire.sql).
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	_ "github.com/go-sql-driver/mysql"
)

// The prototypes (p_no1 and p_light: fromAcquire).
const (
	leanProc = `CREATE PROCEDURE p_lean(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_payload VARBINARY(4096))
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_ok BOOLEAN DEFAULT FALSE;
    DECLARE v_token BIGINT DEFAULT NULL;
    DECLARE v_row INT DEFAULT 0;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT COUNT(*) INTO v_row FROM sqldlm_locks WHERE name = p_name FOR UPDATE SKIP LOCKED;
    SELECT broken_at IS NULL AND expires_at > SYSDATE(6)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders FORCE INDEX (sqldlm_holders_name) WHERE name = p_name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_name) WHERE name = p_name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_settings WHERE id = 1 AND audit)
      INTO v_ok FROM sqldlm_leases WHERE id = p_lease LOCK IN SHARE MODE;
    IF v_ok AND v_row > 0 THEN
        INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
        VALUES (p_name, p_lease, p_request, p_mode, SYSDATE(6), p_payload);
        SET v_token = LAST_INSERT_ID();
        UPDATE sqldlm_locks SET token = v_token, updated_at = SYSDATE(6) WHERE name = p_name;
        COMMIT;
    ELSE
        ROLLBACK;
    END IF;
    SET time_zone = saved_tz;
    SELECT IF(v_token IS NULL, 0, 1) AS status, v_token AS token, NULL AS owner, NULL AS mode, NULL AS e, 0 AS a, 0 AS t;
END`
	bareProc = `CREATE PROCEDURE p_bare(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_payload VARBINARY(4096))
BEGIN
    DECLARE v_token BIGINT DEFAULT NULL;
    START TRANSACTION;
    INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
    VALUES (p_name, p_lease, p_request, p_mode, SYSDATE(6), p_payload);
    SET v_token = LAST_INSERT_ID();
    COMMIT;
    SELECT 1 AS status, v_token AS token, NULL AS owner, NULL AS mode, NULL AS e, 0 AS a, 0 AS t;
END`
	oneRowTable = `CREATE TABLE IF NOT EXISTS ox (name VARBINARY(255) NOT NULL PRIMARY KEY, token BIGINT NOT NULL DEFAULT 0,
    x_lease BIGINT NULL, x_request BIGINT NULL, x_since DATETIME(6) NULL, x_payload VARBINARY(1024) NOT NULL DEFAULT '')`
	// The one-row grant and release, each in a procedure that makes it
	// independent of the session (time zone, autocommit), as sqldlm's
	// procedures are.
	oneRowProc = `CREATE PROCEDURE p_onerow(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_n INT DEFAULT 0;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    START TRANSACTION;
    UPDATE ox SET x_lease = p_lease, x_request = p_request, x_since = SYSDATE(6), token = token + 1
     WHERE name = p_name AND x_lease IS NULL
       AND EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = p_lease AND l.broken_at IS NULL AND l.expires_at > SYSDATE(6));
    SET v_n = ROW_COUNT();
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n;
END`
	oneRowReleaseProc = `CREATE PROCEDURE p_onerow_release(IN p_name VARBINARY(1024), IN p_lease BIGINT)
BEGIN
    DECLARE v_n INT DEFAULT 0;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    START TRANSACTION;
    UPDATE ox SET x_lease = NULL, x_request = NULL, x_since = NULL WHERE name = p_name AND x_lease = p_lease;
    SET v_n = ROW_COUNT();
    COMMIT;
    SELECT v_n;
END`
	// sqldlm_release's DELETE alone in a procedure, committing only where
	// the session's autocommit is off (then the DELETE opened a
	// transaction): no SET TRANSACTION, no START TRANSACTION.
	leanReleaseProc = `CREATE PROCEDURE p_release_lean(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT)
BEGIN
    DECLARE v_n INT;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    DELETE FROM sqldlm_holders
     WHERE token = p_token AND lease_id = p_lease AND name = p_name
       AND NOT EXISTS (SELECT 1 FROM sqldlm_settings WHERE id = 1 AND audit);
    SET v_n = ROW_COUNT();
    IF NOT @@session.autocommit THEN
        COMMIT;
    END IF;
    SELECT v_n AS released;
END`
	floorTable = `CREATE TABLE IF NOT EXISTS floor (name VARCHAR(255) NOT NULL PRIMARY KEY, owner VARCHAR(255) NOT NULL)`
	// The release every sqldlm variant uses but v8: sqldlm_release's
	// DELETE without the procedure around it.
	plainRelease = `DELETE FROM sqldlm_holders WHERE token = ? AND lease_id = ? AND name = ?
    AND NOT EXISTS (SELECT 1 FROM sqldlm_settings WHERE id = 1 AND audit)`
)

// fromAcquire builds a prototype from sqldlm_acquire as the schema has it
// (dialect/mysql/schema/sqldlm_acquire.sql): p_no1 has no first consistent
// read in its fast path (it assumes the name free; the locked read after
// it checks again), p_light replaces that read by a lighter one (any hold
// or waiter of the name, the name's row) and runs the full read only when
// the lighter one finds the name in use.
func fromAcquire(name string) string {
	b, err := os.ReadFile("dialect/mysql/schema/sqldlm_acquire.sql")
	if err != nil {
		log.Fatal(err)
	}
	s := string(b)
	s = s[strings.Index(s, "CREATE PROCEDURE"):]
	s = strings.Replace(s, "CREATE PROCEDURE `sqldlm_acquire`", "CREATE PROCEDURE `"+name+"`", 1)
	const from, to = "        -- (1) One consistent read, no row lock.", "          INTO v_live, v_waiter, v_used, v_row, v_withdrawn;"
	a, z := strings.Index(s, from), strings.Index(s, to)
	if a < 0 || z < 0 {
		log.Fatal("sqldlm_acquire's first read not found")
	}
	z += len(to)
	var read string
	switch name {
	case "p_no1":
		read = "        SET v_live = TRUE, v_waiter = NULL, v_used = FALSE, v_row = 1, v_withdrawn = FALSE;"
	case "p_light":
		read = `        SET v_now = SYSDATE(6);
        SELECT EXISTS (SELECT 1 FROM sqldlm_holders FORCE INDEX (sqldlm_holders_name) WHERE name = p_name)
               OR EXISTS (SELECT 1 FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_name) WHERE name = p_name),
               (SELECT COUNT(*) FROM sqldlm_locks WHERE name = p_name)
          INTO v_used, v_row;
        IF v_used THEN
` + s[a:z] + `
        ELSE
            SET v_live = TRUE, v_waiter = NULL, v_withdrawn = FALSE;
        END IF;`
	}
	s = s[:a] + read + s[z:]
	return strings.TrimSuffix(strings.TrimSpace(s), ";")
}

func serverCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		log.Fatal(err)
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return time.Duration(u+s) * 10 * time.Millisecond
}

func main() {
	dsn := flag.String("dsn", "root@tcp(127.0.0.1:3306)/stepbench", "go-sql-driver DSN of a migrated database")
	n := flag.Int("n", 3000, "pairs")
	pid := flag.Int("pid", 0, "mariadbd's pid")
	variant := flag.String("v", "v8", "floor, v8, v8lean, v8del, no1, light, lean, bare, plain, clienttx, onerow, onerowlease or onerowproc")
	flag.Parse()
	db, err := sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		log.Fatal(err)
	}
	must := func(_ any, err error) {
		if err != nil {
			log.Fatal(err)
		}
	}
	for _, ddl := range []string{floorTable, oneRowTable} {
		must(conn.ExecContext(ctx, ddl))
	}
	for name, ddl := range map[string]string{"p_lean": leanProc, "p_bare": bareProc, "p_no1": fromAcquire("p_no1"), "p_light": fromAcquire("p_light"),
		"p_onerow": oneRowProc, "p_onerow_release": oneRowReleaseProc, "p_release_lean": leanReleaseProc} {
		must(conn.ExecContext(ctx, "DROP PROCEDURE IF EXISTS "+name))
		must(conn.ExecContext(ctx, ddl))
	}
	lease := rand.Int64N(1 << 50)
	must(conn.ExecContext(ctx, `CALL sqldlm_create_lease(?, 'bench', 3600000000)`, lease))
	name := fmt.Sprintf("n%d", lease)
	must(conn.ExecContext(ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (?, 0, UTC_TIMESTAMP(6))`, name))
	must(conn.ExecContext(ctx, `INSERT INTO ox (name) VALUES (?)`, name))
	prep := func(q string) *sql.Stmt {
		s, err := conn.PrepareContext(ctx, q)
		if err != nil {
			log.Fatal(q, err)
		}
		return s
	}
	var pair func() error
	switch *variant {
	case "floor":
		a := prep(`INSERT IGNORE INTO floor (name, owner) VALUES (?, ?)`)
		r := prep(`DELETE FROM floor WHERE name = ? AND owner = ?`)
		pair = func() error {
			if _, err := a.Exec(name, "o"); err != nil {
				return err
			}
			_, err := r.Exec(name, "o")
			return err
		}
	case "v8", "v8lean", "v8del", "no1", "light", "lean", "bare":
		aq := map[string]string{
			"v8": `CALL sqldlm_acquire(?, ?, ?, 'X', FALSE, 0, '', 0)`, "v8lean": `CALL sqldlm_acquire(?, ?, ?, 'X', FALSE, 0, '', 0)`, "v8del": `CALL sqldlm_acquire(?, ?, ?, 'X', FALSE, 0, '', 0)`,
			"no1": `CALL p_no1(?, ?, ?, 'X', FALSE, 0, '', 0)`, "light": `CALL p_light(?, ?, ?, 'X', FALSE, 0, '', 0)`, "lean": `CALL p_lean(?, ?, ?, 'X', '')`, "bare": `CALL p_bare(?, ?, ?, 'X', '')`,
		}[*variant]
		a := prep(aq)
		r := prep(`CALL sqldlm_release(?, ?, ?)`)
		if *variant == "v8lean" {
			r = prep(`CALL p_release_lean(?, ?, ?)`)
		}
		d := prep(plainRelease)
		pair = func() error {
			var st, ah, took int
			var tok, e sql.NullInt64
			var o, m sql.NullString
			rows, err := a.Query(name, lease, rand.Int64())
			if err != nil {
				return err
			}
			for rows.Next() {
				if err := rows.Scan(&st, &tok, &o, &m, &e, &ah, &took); err != nil {
					return err
				}
			}
			for rows.NextResultSet() {
			}
			rows.Close()
			if st != 1 {
				return fmt.Errorf("status %d", st)
			}
			if *variant == "v8" || *variant == "v8lean" {
				rows, err = r.Query(name, lease, tok.Int64)
				if err != nil {
					return err
				}
				for rows.Next() {
				}
				for rows.NextResultSet() {
				}
				return rows.Close()
			}
			res, err := d.Exec(tok.Int64, lease, name)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k != 1 {
				return fmt.Errorf("deleted %d", k)
			}
			return nil
		}
	case "clienttx", "plain":
		// The session is set up once, as the procedures do per call.
		must(conn.ExecContext(ctx, `SET time_zone = '+00:00'`))
		must(conn.ExecContext(ctx, `SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED`))
		lk := prep(`SELECT COUNT(*) FROM sqldlm_locks WHERE name = ? FOR UPDATE SKIP LOCKED`)
		chk := prep(`SELECT broken_at IS NULL AND expires_at > SYSDATE(6)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders FORCE INDEX (sqldlm_holders_name) WHERE name = ?)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_name) WHERE name = ?)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = ? AND request_id = ?)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_settings WHERE id = 1 AND audit)
      FROM sqldlm_leases WHERE id = ? LOCK IN SHARE MODE`)
		ins := prep(`INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload) VALUES (?, ?, ?, 'X', SYSDATE(6), '')`)
		up := prep(`UPDATE sqldlm_locks SET token = ?, updated_at = SYSDATE(6) WHERE name = ?`)
		d := prep(plainRelease)
		begin, commit := prep(`START TRANSACTION`), prep(`COMMIT`)
		pair = func() error {
			req := rand.Int64()
			var tok int64
			if *variant == "clienttx" {
				if _, err := begin.Exec(); err != nil {
					return err
				}
				var k int
				var ok bool
				if err := lk.QueryRow(name).Scan(&k); err != nil {
					return err
				}
				if err := chk.QueryRow(name, name, lease, req, lease).Scan(&ok); err != nil {
					return err
				}
				if !ok || k != 1 {
					return fmt.Errorf("not free")
				}
			}
			res, err := ins.Exec(name, lease, req)
			if err != nil {
				return err
			}
			tok, _ = res.LastInsertId()
			if *variant == "clienttx" {
				if _, err := up.Exec(tok, name); err != nil {
					return err
				}
				if _, err := commit.Exec(); err != nil {
					return err
				}
			}
			_, err = d.Exec(tok, lease, name)
			return err
		}
	case "onerow", "onerowlease":
		aq := `UPDATE ox SET x_lease = ?, x_request = ?, x_since = SYSDATE(6), token = token + 1 WHERE name = ? AND x_lease IS NULL`
		if *variant == "onerowlease" {
			aq += ` AND EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = ? AND l.broken_at IS NULL AND l.expires_at > SYSDATE(6))`
		}
		a := prep(aq)
		r := prep(`UPDATE ox SET x_lease = NULL, x_request = NULL, x_since = NULL WHERE name = ? AND x_lease = ?`)
		pair = func() error {
			args := []any{lease, rand.Int64(), name}
			if *variant == "onerowlease" {
				args = append(args, lease)
			}
			res, err := a.Exec(args...)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k != 1 {
				return fmt.Errorf("not granted")
			}
			_, err = r.Exec(name, lease)
			return err
		}
	case "onerowproc":
		a := prep(`CALL p_onerow(?, ?, ?)`)
		r := prep(`CALL p_onerow_release(?, ?)`)
		call := func(s *sql.Stmt, args ...any) (int, error) {
			rows, err := s.Query(args...)
			if err != nil {
				return 0, err
			}
			var k int
			for rows.Next() {
				if err := rows.Scan(&k); err != nil {
					return 0, err
				}
			}
			for rows.NextResultSet() {
			}
			return k, rows.Close()
		}
		pair = func() error {
			k, err := call(a, name, lease, rand.Int64())
			if err != nil {
				return err
			}
			if k != 1 {
				return fmt.Errorf("not granted")
			}
			_, err = call(r, name, lease)
			return err
		}
	default:
		log.Fatalf("unknown variant %q", *variant)
	}
	for range 300 { // warm-up
		if err := pair(); err != nil {
			log.Fatal(err)
		}
	}
	c0, t0 := serverCPU(*pid), time.Now()
	for range *n {
		if err := pair(); err != nil {
			log.Fatal(err)
		}
	}
	el, cpu := time.Since(t0), serverCPU(*pid)-c0
	fmt.Printf("%-11s pairs/s %6.0f  wall/pair %5.0f us  server CPU/pair %5.0f us\n", *variant,
		float64(*n)/el.Seconds(), float64(el.Microseconds())/float64(*n), float64(cpu.Microseconds())/float64(*n))
}
