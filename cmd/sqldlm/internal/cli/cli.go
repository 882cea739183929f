// Package cli implements the sqldlm command. Each command is a function of
// a context, its arguments and its output streams, so tests run it without a
// terminal.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sqldlm/sqldlm/cmd/sqldlm/internal/bench"
	"github.com/sqldlm/sqldlm/internal/dsn"
)

// Exit codes shared by every command.
const (
	ExitOK    = 0 // success
	ExitError = 1 // the command failed (database error, schema problem)
	ExitUsage = 2 // bad command line: unknown command or flag, missing --dsn
)

// usageError marks an error as the caller's command-line mistake.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitError makes Main exit with code; msg, if any, is printed.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// streams are a command's standard input, output and error.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

// command is one sqldlm subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, s streams) error
}

var commands = map[string]command{
	"demo":    {"run a self-contained demonstration on a temporary SQLite database", runDemo},
	"migrate": {"apply, roll back or show sqldlm's schema migrations (up | down | status)", runMigrate},
	"reap":    {"delete dead clients' leases, holds and waiters (once, or --every interval)", runReap},
	"locks":   {"show who holds and who waits for each lock (--watch to follow)", runLocks},
	"leases":  {"show the clients' leases, live and dead", runLeases},
	"break":   {"force-release a stuck holder by breaking its lease", runBreak},
	"run":     {"run a command while holding a lock, or while elected leader: a distributed flock(1)", runRun},
	"members": {"show the live members of a group (--watch to follow)", runMembers},
	"leader":  {"show the leader of an election", runLeader},
	"log":     {"show the audit log (who held what, when), or turn it on or off", runLog},
	"bench":   {"measure acquire+release against the server's floors (INSERT/DELETE, advisory locks)", runBench},
}

// hidden commands are not listed in the help.
var hidden = map[string]command{
	"demo-worker":      {"a worker process of the demo", runDemoWorker},
	bench.ChildCommand: {"a child process of the benchmark (a leader to kill)", runBenchChild},
}

// Main runs the command line args and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			if _, ok := commands[args[1]]; ok {
				return Main(ctx, []string{args[1], "--help"}, stdin, stdout, stderr)
			}
		}
		printUsage(stdout)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	if args[0] == "--version" || args[0] == "-version" || args[0] == "version" {
		printVersion(stdout)
		return ExitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		cmd, ok = hidden[args[0]]
	}
	if !ok {
		fmt.Fprintf(stderr, "sqldlm: unknown command %q\n\n", args[0])
		printUsage(stderr)
		return ExitUsage
	}
	err := cmd.run(ctx, args[1:], streams{in: stdin, out: stdout, err: stderr})
	if err != nil {
		// Errors may quote a DSN, or a driver may have put its password
		// into one: never print it.
		err = scrubbed(err, dsnArgs(args[1:]))
	}
	var ue *usageError
	var ee *exitError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintf(stderr, "sqldlm %s: %s\n", args[0], ee.msg)
		}
		return ee.code
	case errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "sqldlm %s: %v\n", args[0], err)
		return ExitUsage
	default:
		fmt.Fprintf(stderr, "sqldlm %s: %v\n", args[0], err)
		return ExitError
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "sqldlm: a distributed lock manager inside your PostgreSQL, MySQL/MariaDB or SQLite database.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: sqldlm COMMAND [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-8s %s\n", name, commands[name].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'sqldlm COMMAND --help' for a command's flags.")
	fmt.Fprintln(w, "--dsn takes a URL ("+dsn.Schemes+"), go-sql-driver's user:pass@tcp(host:3306)/db")
	fmt.Fprintln(w, "or libpq's \"host=H dbname=DB user=U\"; it defaults to $SQLDLM_DSN.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit codes: 0 success, 1 the command failed, 2 bad command line. 'sqldlm --version' prints the version.")
}

// newFlagSet returns a flag set whose errors and help go to stderr and are
// reported as usage errors.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sqldlm "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: sqldlm %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, turning flag errors into usage errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error()}
	}
	return nil
}

// dsnFlag registers --dsn, defaulting to $SQLDLM_DSN.
func dsnFlag(fs *flag.FlagSet) *string {
	v := os.Getenv("SQLDLM_DSN")
	fs.Var((*dsnValue)(&v), "dsn", "database `DSN`: a URL ("+dsn.Schemes+"), go-sql-driver's user:pass@tcp(host:3306)/db "+
		"or libpq's \"host=H dbname=DB user=U\" (default $SQLDLM_DSN)")
	return &v
}

// dsnList is a repeatable DSN flag (bench's --node). It shows itself with
// the passwords hidden.
type dsnList []string

func (l *dsnList) String() string {
	if l == nil {
		return ""
	}
	out := make([]string, len(*l))
	for i, v := range *l {
		out[i] = dsn.Redact(v)
	}
	return strings.Join(out, " ")
}

func (l *dsnList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// dsnValue is the value of --dsn. It shows itself with its password
// hidden: the help prints it as the flag's default.
type dsnValue string

func (v *dsnValue) String() string {
	if v == nil {
		return ""
	}
	return dsn.Redact(string(*v))
}

func (v *dsnValue) Set(s string) error {
	*v = dsnValue(s)
	return nil
}

// dsnArgs returns every DSN the command line and the environment give, for
// scrubbing their passwords from what the command prints.
func dsnArgs(args []string) []string {
	out := []string{os.Getenv("SQLDLM_DSN")}
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || (name != "dsn" && name != "node") {
			continue
		}
		if hasValue {
			out = append(out, value)
		} else if i+1 < len(args) {
			out = append(out, args[i+1])
		}
	}
	return out
}

// parseCommand parses a database command's flags and checks the ones they
// share: --dsn must be given, and --output (when output is not nil) must
// name a known format.
func parseCommand(fs *flag.FlagSet, args []string, dsnURL, output *string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	if err := requireDSN(*dsnURL); err != nil {
		return err
	}
	if output != nil {
		return checkOutput(*output)
	}
	return nil
}

// noArgs refuses arguments left after the flags: a command that takes none
// does not ignore them.
func noArgs(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q (%s takes only flags)", fs.Arg(0), fs.Name())
	}
	return nil
}

func requireDSN(raw string) error {
	if strings.TrimSpace(raw) == "" {
		return usagef("no database given: pass --dsn DSN or set SQLDLM_DSN (forms: %s)", dsn.Forms)
	}
	return nil
}

// scrubbed returns err with the passwords of dsns hidden in its message,
// keeping the kind of error Main reports (usage, exit code, help).
func scrubbed(err error, dsns []string) error {
	var ue *usageError
	var ee *exitError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return err
	case errors.As(err, &ee):
		return &exitError{code: ee.code, msg: dsn.Scrub(ee.msg, dsns...)}
	case errors.As(err, &ue):
		return &usageError{dsn.Scrub(err.Error(), dsns...)}
	}
	return errors.New(dsn.Scrub(err.Error(), dsns...))
}

// durationFlag registers a duration flag, as fs.Duration does, that also
// takes days ("1d", "1.5d") and answers a value it cannot read with the
// forms it can: "--wait 30" needs a unit.
func durationFlag(fs *flag.FlagSet, name string, value time.Duration, usage string) *time.Duration {
	d := value
	fs.Var((*durationValue)(&d), name, usage)
	return &d
}

type durationValue time.Duration

func (v *durationValue) String() string {
	if v == nil {
		return "0s"
	}
	return time.Duration(*v).String()
}

func (v *durationValue) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*v = durationValue(d)
	return nil
}

// parseDuration reads a Go duration, or a number of days ending in "d".
func parseDuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.ParseFloat(days, 64); err == nil && n >= 0 && n <= 100*365 {
			return time.Duration(n * float64(24*time.Hour)), nil
		}
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return 0, fmt.Errorf("%q has no unit: write %ss, %sm, %sh or %sd", s, s, s, s, s)
	}
	return 0, fmt.Errorf("%q is not a duration: write it as 500ms, 30s, 5m, 2h or 1d", s)
}
