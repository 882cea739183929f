package cli

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/sqldlm/sqldlm"
)

// JSON output of `sqldlm locks --output json`. The field names are stable.
type locksJSON struct {
	Locks []lockJSON `json:"locks"`
}

type lockJSON struct {
	Name    string       `json:"name"`
	Mode    string       `json:"mode"` // "exclusive", "shared", or "" when only dead leases hold it
	Token   int64        `json:"token"`
	Holders []holderJSON `json:"holders"`
	Waiters []waiterJSON `json:"waiters"`
}

type holderJSON struct {
	Owner            string    `json:"owner"`
	LeaseID          int64     `json:"lease_id"`
	Mode             string    `json:"mode"`
	Token            int64     `json:"token"`
	Since            time.Time `json:"since"`
	HeldSeconds      float64   `json:"held_seconds"`
	ExpiresInSeconds float64   `json:"expires_in_seconds"`
	Live             bool      `json:"live"`
	Payload          string    `json:"payload"`
}

type waiterJSON struct {
	Owner         string    `json:"owner"`
	LeaseID       int64     `json:"lease_id"`
	Mode          string    `json:"mode"`
	Upgrade       bool      `json:"upgrade"`
	Since         time.Time `json:"since"`
	WaitedSeconds float64   `json:"waited_seconds"`
	Position      int       `json:"position"`
}

// JSON output of `sqldlm break --output json`: the leases it broke.
type breakJSON struct {
	Name   string      `json:"name"`
	Broken []leaseJSON `json:"broken"`
}

// JSON output of `sqldlm leases --output json`.
type leasesJSON struct {
	Leases []leaseJSON `json:"leases"`
}

type leaseJSON struct {
	ID               int64     `json:"id"`
	Owner            string    `json:"owner"`
	Created          time.Time `json:"created"`
	Renewed          time.Time `json:"renewed"`
	ExpiresInSeconds float64   `json:"expires_in_seconds"`
	Live             bool      `json:"live"`
	Broken           bool      `json:"broken"`
	Holds            int       `json:"holds"`
	Waits            int       `json:"waits"`
}

// openAdmin opens the database a sqldlm DSN names, with a sqldlm.Admin on
// it.
func openAdmin(ctx context.Context, raw string) (*sql.DB, *sqldlm.Admin, error) {
	db, d, err := openMigrated(ctx, raw)
	if err != nil {
		return nil, nil, err
	}
	admin, err := sqldlm.NewAdmin(db, sqldlm.AdminConfig{Dialect: d})
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, admin, nil
}

// dbErr is the cause inside an error of a sqldlm.Admin method, without the
// "sqldlm: list locks: " in which the library says what failed: the
// command's messages say it in their own words.
func dbErr(err error) error {
	if cause := errors.Unwrap(err); cause != nil {
		return cause
	}
	return err
}

func modeName(m sqldlm.Mode) string {
	if m == sqldlm.Exclusive {
		return "exclusive"
	}
	return "shared"
}

func toLocksJSON(locks []sqldlm.LockInfo) locksJSON {
	out := locksJSON{Locks: []lockJSON{}}
	for _, s := range locks {
		l := lockJSON{Name: s.Name, Token: s.Token, Holders: []holderJSON{}, Waiters: []waiterJSON{}}
		if s.Mode != 0 {
			l.Mode = modeName(s.Mode)
		}
		for _, h := range s.Holders {
			l.Holders = append(l.Holders, holderJSON{h.Owner, h.LeaseID, modeName(h.Mode), h.Token, h.Since,
				h.HeldFor.Seconds(), h.ExpiresIn.Seconds(), h.Live, h.Payload})
		}
		for _, w := range s.Waiters {
			l.Waiters = append(l.Waiters, waiterJSON{w.Owner, w.LeaseID, modeName(w.Mode), w.Upgrade, w.Since, w.Waited.Seconds(), w.Position})
		}
		out.Locks = append(out.Locks, l)
	}
	return out
}

func outputFlag(fs interface {
	String(name, value, usage string) *string
}) *string {
	return fs.String("output", "table", "output format: table or json (json field names are stable)")
}

func checkOutput(output string) error {
	if output != "table" && output != "json" {
		return usagef("unknown --output %q: use table or json", output)
	}
	return nil
}

const locksSynopsis = `--dsn URL [--prefix P] [--owner O] [--watch] [--output table|json]

Shows every lock that is held or awaited: its holders (owner, mode, fencing
token, how long held, when the lease expires unless renewed) and its waiters
(how many, the first one and how long it has waited). Ages come from the
database's clock. A holder whose lease is dead is marked "dead": a waiter or
the reaper will free it. With --watch the table refreshes in place.`

func runLocks(ctx context.Context, args []string, s streams) error {
	fs := newFlagSet("locks", locksSynopsis, s.err)
	dsnURL := dsnFlag(fs)
	prefix := fs.String("prefix", "", "only names starting with this (no wildcards)")
	owner := fs.String("owner", "", "only names this owner holds or waits for")
	watch := fs.Bool("watch", false, "refresh every --interval until interrupted")
	interval := durationFlag(fs, "interval", time.Second, "with --watch: refresh interval")
	output := outputFlag(fs)
	wide := wideFlag(fs)
	if err := parseCommand(fs, args, dsnURL, output); err != nil {
		return err
	}
	if *watch && *interval <= 0 {
		return usagef("--interval must be positive")
	}
	db, admin, err := openAdmin(ctx, *dsnURL)
	if err != nil {
		return err
	}
	defer db.Close()
	for {
		states, err := admin.Locks(ctx, sqldlm.Filter{Prefix: *prefix, Owner: *owner})
		if err != nil {
			if *watch && ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("list locks: %w", dbErr(err))
		}
		if *watch && *output == "table" {
			fmt.Fprint(s.out, "\033[H\033[2J") // clear the screen, cursor home
			fmt.Fprintf(s.out, "sqldlm locks  %s  (every %s, Ctrl-C to stop)\n\n", time.Now().Format("15:04:05"), *interval)
		}
		if *output == "json" {
			enc := json.NewEncoder(s.out)
			if err := enc.Encode(toLocksJSON(states)); err != nil {
				return err
			}
		} else if err := printLocks(s.out, states, fullWidth(s.out, *wide)); err != nil {
			return err
		}
		if !*watch {
			return nil
		}
		if !sleepOrDone(ctx, *interval) {
			return nil
		}
	}
}

// sleepOrDone waits d, or until ctx ends (then it reports false).
func sleepOrDone(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// printLocks writes the locks table: one row per holder. On a terminal,
// unless full, it is sized for 80 columns (long names and owners are
// shortened with "…"); piped, every name is whole, so that it can be
// copied into sqldlm break. The WAITING column shows how many wait, the
// first in line and how long it has waited.
func printLocks(w io.Writer, states []sqldlm.LockInfo, full bool) error {
	short := shortener(full)
	if len(states) == 0 {
		_, err := fmt.Fprintln(w, "no locks held or awaited")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMODE\tTOKEN\tHOLDER\tHELD\tEXPIRES\tWAITING")
	for _, s := range states {
		waiting := "-"
		if n := len(s.Waiters); n > 0 {
			first := s.Waiters[0]
			waiting = fmt.Sprintf("%d %s %s", n, short(first.Owner, 8), age(first.Waited))
		}
		for i, h := range s.Holders {
			name, wait := short(s.Name, 18), waiting
			if i > 0 {
				name, wait = "", ""
			}
			mode := "X"
			if h.Mode == sqldlm.Shared {
				mode = "S"
			}
			expires := age(h.ExpiresIn)
			if !h.Live {
				expires = "dead"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", name, mode, h.Token, short(h.Owner, 12), age(h.HeldFor), expires, wait)
		}
		if len(s.Holders) == 0 {
			fmt.Fprintf(tw, "%s\t-\t%d\t-\t-\t-\t%s\n", short(s.Name, 18), s.Token, waiting)
		}
	}
	return tw.Flush()
}

// short shortens s to at most n runes, ending with "…".
func short(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// shortener returns short, or, when full, a function that shortens nothing.
func shortener(full bool) func(string, int) string {
	if full {
		return func(s string, _ int) string { return s }
	}
	return short
}

// wideFlag registers --wide.
func wideFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("wide", false, "on a terminal too, show names, owners and lease ids whole (piped output always does)")
}

// fullWidth reports whether a table written to w shows every value whole:
// when asked to, and whenever w is not a terminal.
func fullWidth(w io.Writer, wide bool) bool { return wide || !isTerminal(w) }

// isTerminal reports whether w is a terminal (a test's writer may say it
// is one), not merely a character device: 2>/dev/null is not one.
func isTerminal(w io.Writer) bool {
	switch f := w.(type) {
	case interface{ IsTerminal() bool }:
		return f.IsTerminal()
	case *os.File:
		return term.IsTerminal(int(f.Fd()))
	}
	return false
}

// age formats a duration compactly: 850ms, 12s, 3m04s, 2h05m, 3d04h.
func age(d time.Duration) string {
	neg := ""
	if d < 0 {
		neg, d = "-", -d
	}
	switch {
	case d < time.Second:
		return fmt.Sprintf("%s%dms", neg, d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%s%ds", neg, int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%s%dm%02ds", neg, int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%s%dh%02dm", neg, int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%s%dd%02dh", neg, int(d.Hours())/24, int(d.Hours())%24)
}

const leasesSynopsis = `--dsn URL [--output table|json]

Shows every client lease: live ones, and dead ones the reaper has not
deleted yet (expired, or broken by a takeover or by sqldlm break), with how
many locks each holds and awaits.`

func runLeases(ctx context.Context, args []string, s streams) error {
	fs := newFlagSet("leases", leasesSynopsis, s.err)
	dsnURL := dsnFlag(fs)
	output := outputFlag(fs)
	wide := wideFlag(fs)
	if err := parseCommand(fs, args, dsnURL, output); err != nil {
		return err
	}
	db, admin, err := openAdmin(ctx, *dsnURL)
	if err != nil {
		return err
	}
	defer db.Close()
	leases, err := admin.Leases(ctx)
	if err != nil {
		return fmt.Errorf("list leases: %w", dbErr(err))
	}
	if *output == "json" {
		out := leasesJSON{Leases: []leaseJSON{}}
		for _, l := range leases {
			out.Leases = append(out.Leases, leaseJSON{l.ID, l.Owner, l.Created, l.Renewed, l.ExpiresIn.Seconds(), l.Live, l.Broken, l.Holds, l.Waits})
		}
		return json.NewEncoder(s.out).Encode(out)
	}
	if len(leases) == 0 {
		_, err := fmt.Fprintln(s.out, "no leases")
		return err
	}
	full := fullWidth(s.out, *wide)
	short := shortener(full)
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OWNER\tLEASE\tSTATE\tAGE\tRENEWED\tEXPIRES\tHOLDS\tWAITS")
	now := time.Now()
	for _, l := range leases {
		state := "live"
		switch {
		case l.Broken:
			state = "broken"
		case !l.Live:
			state = "expired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s ago\t%s\t%d\t%d\n", short(l.Owner, 20), leaseID(l.ID, full), state,
			age(now.Sub(l.Created)), age(now.Sub(l.Renewed)), age(l.ExpiresIn), l.Holds, l.Waits)
	}
	return tw.Flush()
}

// leaseID shows a lease id as JSON and the library's logs do, in decimal:
// whole when full, otherwise its last 8 digits after "…" (what a terminal
// table has room for).
func leaseID(id int64, full bool) string {
	s := strconv.FormatInt(id, 10)
	if full || len(s) <= 9 {
		return s
	}
	return "…" + s[len(s)-8:]
}

const breakSynopsis = `NAME --dsn URL [--owner O] [--yes]

An operator's forced release of a stuck holder: the leases holding NAME (only
those of --owner, if given) are marked broken, which ends them at once. Their
holders learn it at their next renewal, their Fence calls fail with ErrLost,
and a waiter takes NAME over (a broken lease loses every lock it holds, not
only NAME). Asks for confirmation unless --yes; each broken lease is logged
to standard error.

Exit codes: 0 broken (or nothing to break), 1 failure, 2 bad command line,
3 not confirmed.`

// ExitNotConfirmed is break's exit code when the operator does not confirm.
const ExitNotConfirmed = 3

func runBreak(ctx context.Context, args []string, s streams) error {
	fs := newFlagSet("break", breakSynopsis, s.err)
	dsnURL := dsnFlag(fs)
	owner := fs.String("owner", "", "only break the leases of this owner")
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	output := outputFlag(fs)
	name, rest := "", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, rest = args[0], args[1:]
	}
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	extra := fs.Args()
	if name == "" && len(extra) > 0 {
		name, extra = extra[0], extra[1:]
	}
	if len(extra) > 0 {
		return usagef("unexpected argument %q: break takes one NAME", extra[0])
	}
	if name == "" {
		return usagef("missing NAME: sqldlm break NAME --dsn URL")
	}
	if err := checkOutput(*output); err != nil {
		return err
	}
	if *output == "json" && !*yes {
		return usagef("--output json needs --yes (no question is asked in JSON mode)")
	}
	if err := requireDSN(*dsnURL); err != nil {
		return err
	}
	db, admin, err := openAdmin(ctx, *dsnURL)
	if err != nil {
		return err
	}
	defer db.Close()
	states, err := admin.Locks(ctx, sqldlm.Filter{Prefix: name, Owner: *owner})
	if err != nil {
		return fmt.Errorf("list holders: %w", dbErr(err))
	}
	var victims []sqldlm.HolderInfo
	for _, st := range states {
		if st.Name != name {
			continue
		}
		for _, h := range st.Holders {
			if h.Live && (*owner == "" || h.Owner == *owner) {
				victims = append(victims, h)
			}
		}
	}
	if len(victims) == 0 && *output == "json" {
		return json.NewEncoder(s.out).Encode(breakJSON{Name: name, Broken: []leaseJSON{}})
	}
	if len(victims) == 0 {
		fmt.Fprintf(s.out, "nothing to break: no live holder of %q\n", name)
		return nil
	}
	if *output == "table" {
		fmt.Fprintf(s.out, "holders of %q:\n", name)
		for _, h := range victims {
			fmt.Fprintf(s.out, "  %s  %s  token %d  held %s  lease %s\n", h.Owner, modeName(h.Mode), h.Token, age(h.HeldFor), leaseID(h.LeaseID, true))
		}
	}
	if !*yes {
		fmt.Fprintf(s.out, "break these %d lease(s)? every lock they hold is lost [y/N] ", len(victims))
		line, _ := bufio.NewReader(s.in).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			fmt.Fprintln(s.out, "not broken")
			return &exitError{code: ExitNotConfirmed, msg: "not confirmed"}
		}
	}
	broken, err := admin.Break(ctx, name, *owner)
	// Log what was broken even if part of the break failed.
	logger := slog.New(slog.NewTextHandler(s.err, nil))
	for _, l := range broken {
		logger.Info("sqldlm: lease broken by operator", "lock_name", name, "owner", l.Owner, "lease_id", l.ID, "locks", l.Holds)
	}
	if *output == "json" {
		out := breakJSON{Name: name, Broken: []leaseJSON{}}
		for _, l := range broken {
			out.Broken = append(out.Broken, leaseJSON{l.ID, l.Owner, l.Created, l.Renewed, l.ExpiresIn.Seconds(), l.Live, l.Broken, l.Holds, l.Waits})
		}
		if encErr := json.NewEncoder(s.out).Encode(out); encErr != nil && err == nil {
			err = encErr
		}
	} else {
		fmt.Fprintf(s.out, "broke %d lease(s) holding %q\n", len(broken), name)
	}
	if err != nil {
		return fmt.Errorf("break %q: %w (run it again)", name, dbErr(err))
	}
	return nil
}
