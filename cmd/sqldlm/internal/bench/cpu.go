package bench

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sqldlm/sqldlm/internal/dsn"
)

// clockTick is the unit of /proc/PID/stat's CPU times (USER_HZ), 1/100 s
// on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// cpuSampler reads the CPU time the database server has used so far, from
// /proc/PID/stat of its processes (user + system, all threads).
type cpuSampler struct {
	procs         []string
	backendTitles bool
	database      string // with backendTitles: count only this database's client backends
}

// newCPUSampler returns a sampler for the server d names, or nil and the
// reason it cannot measure (a server on another host, an embedded
// database, no /proc).
func newCPUSampler(d dsn.DSN, f *family) (*cpuSampler, string) {
	if len(f.serverProcs) == 0 {
		return nil, "n/a: embedded database (its CPU is the benchmark process's)"
	}
	host, _, err := net.SplitHostPort(d.Host)
	if err != nil {
		host = d.Host
	}
	if !isLocalHost(host) {
		return nil, fmt.Sprintf("n/a: the server (%s) is not on this host", d.Host)
	}
	s := &cpuSampler{procs: f.serverProcs, backendTitles: f.backendTitles}
	if f.backendTitles {
		if cfg, err := pgx.ParseConfig(d.DriverDSN); err == nil {
			s.database = cfg.Database
		}
	}
	n, _, err := s.scan()
	if err != nil {
		return nil, "n/a: " + err.Error()
	}
	if n == 0 {
		return nil, fmt.Sprintf("n/a: no %s process found in /proc", strings.Join(f.serverProcs, " or "))
	}
	what := fmt.Sprintf("%d %s process(es) on this host, from /proc/PID/stat", n, strings.Join(f.serverProcs, "/"))
	if s.database != "" {
		what += fmt.Sprintf(" (client backends of databases other than %q left out)", s.database)
	}
	return s, what
}

func isLocalHost(host string) bool {
	if host == "" || strings.EqualFold(host, "localhost") || strings.HasPrefix(host, "/") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sample returns the server's CPU time so far. Processes that exit between
// two samples take their time with them, so the pools keep their
// connections open for a whole cell.
func (s *cpuSampler) sample() (time.Duration, error) {
	_, d, err := s.scan()
	return d, err
}

func (s *cpuSampler) scan() (int, time.Duration, error) {
	comms, err := filepath.Glob("/proc/[0-9]*/comm")
	if err != nil {
		return 0, 0, err
	}
	if len(comms) == 0 {
		return 0, 0, fmt.Errorf("no /proc on this system")
	}
	n := 0
	var total time.Duration
	for _, comm := range comms {
		b, err := os.ReadFile(comm)
		if err != nil || !slices.Contains(s.procs, strings.TrimSpace(string(b))) {
			continue
		}
		dir := filepath.Dir(comm)
		if s.backendTitles && s.database != "" {
			title, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
			if db, ok := backendDatabase(string(title)); ok && db != s.database {
				continue
			}
		}
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue // exited
		}
		t, err := statCPU(string(stat))
		if err != nil {
			continue
		}
		n++
		total += t
	}
	return n, total, nil
}

// statCPU returns utime + stime of a /proc/PID/stat line.
func statCPU(stat string) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may contain spaces.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat line")
	}
	fields := strings.Fields(stat[i+1:])
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return 0, fmt.Errorf("short stat line")
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed stat times")
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// backendDatabase reads the database of a PostgreSQL client backend from
// its process title, "postgres: [cluster: ]USER DATABASE HOST(PORT) STATE";
// ok is false for the postmaster and auxiliary processes (checkpointer,
// walwriter, ...), which every database shares.
func backendDatabase(cmdline string) (string, bool) {
	title := strings.TrimSpace(strings.ReplaceAll(cmdline, "\x00", " "))
	rest, ok := strings.CutPrefix(title, "postgres: ")
	if !ok {
		return "", false
	}
	f := strings.Fields(rest)
	if len(f) > 0 && strings.HasSuffix(f[0], ":") { // cluster_name
		f = f[1:]
	}
	if len(f) >= 3 && (strings.Contains(f[2], "(") || f[2] == "[local]") {
		return f[1], true
	}
	return "", false
}

// selfCPU returns the CPU time this process has used so far, or false where
// /proc is missing.
func selfCPU() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, false
	}
	t, err := statCPU(string(b))
	return t, err == nil
}
