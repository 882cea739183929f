package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sqldlm/sqldlm"
)

const logSynopsis = `--dsn URL [--name N] [--since 1h] [--limit K] [flags]
       sqldlm log on --dsn URL [--retention 168h]
       sqldlm log off --dsn URL

Prints the audit log, oldest first: one line per grant, upgrade, downgrade,
release, takeover, expiry and operator break, with the database's time, the
name, the holder's owner, lease, token and mode. It answers "who held
node/42 at 03:12?".

The log is written only while it is on. "log on" turns it on for the whole
schema (every client's changes are logged from then on) and sets how long
rows are kept; the reaper deletes older rows. "log off" stops writing; the
rows already written stay until they age out. A client with Config.Audit
turns it on by itself.`

// JSON output of `sqldlm log --output json`. The field names are stable.
type logJSON struct {
	Enabled          bool           `json:"enabled"`
	RetentionSeconds float64        `json:"retention_seconds"`
	Entries          []logEntryJSON `json:"entries"`
}

type logEntryJSON struct {
	ID      int64     `json:"id"`
	At      time.Time `json:"at"`
	Event   string    `json:"event"`
	Name    string    `json:"name"`
	Owner   string    `json:"owner"`
	LeaseID int64     `json:"lease_id"`
	Token   int64     `json:"token"`
	Mode    string    `json:"mode"`
	Payload string    `json:"payload"`
	Detail  string    `json:"detail"`
}

func runLog(ctx context.Context, args []string, s streams) error {
	action, rest := "", args
	if len(args) > 0 && (args[0] == "on" || args[0] == "off") {
		action, rest = args[0], args[1:]
	}
	fs := newFlagSet("log", logSynopsis, s.err)
	dsnURL := dsnFlag(fs)
	name := fs.String("name", "", "only this lock name")
	since := durationFlag(fs, "since", 0, "only rows written within this long (by the database's clock), e.g. 1h")
	limit := fs.Int("limit", 0, "only the newest K rows (0: all)")
	retention := durationFlag(fs, "retention", 7*24*time.Hour, `with "on": keep rows this long`)
	output := outputFlag(fs)
	wide := wideFlag(fs)
	if err := parseCommand(fs, rest, dsnURL, output); err != nil {
		return err
	}
	if *since < 0 || *limit < 0 {
		return usagef("--since and --limit must not be negative")
	}
	if action == "on" && *retention < time.Second {
		return usagef("--retention %s: keep rows at least 1s", *retention)
	}
	db, admin, err := openAdmin(ctx, *dsnURL)
	if err != nil {
		return err
	}
	defer db.Close()
	settings, err := admin.AuditSettings(ctx)
	if err != nil {
		return fmt.Errorf("read the audit setting: %w", dbErr(err))
	}
	switch action {
	case "on", "off":
		settings.Enabled = action == "on"
		if action == "on" {
			settings.Retention = *retention
		}
		if err := admin.SetAudit(ctx, settings); err != nil {
			return fmt.Errorf("turn the audit log %s: %w", action, dbErr(err))
		}
		_, err := fmt.Fprintf(s.out, "audit log %s (rows kept %s)\n", action, settings.Retention)
		return err
	}
	entries, err := admin.AuditLog(ctx, sqldlm.AuditFilter{Name: *name, Since: *since, Limit: *limit})
	if err != nil {
		return fmt.Errorf("read the audit log: %w", dbErr(err))
	}
	if *output == "json" {
		out := logJSON{Enabled: settings.Enabled, RetentionSeconds: settings.Retention.Seconds(), Entries: []logEntryJSON{}}
		for _, e := range entries {
			out.Entries = append(out.Entries, logEntryJSON{e.ID, e.At, e.Event, e.Name, e.Owner, e.LeaseID, e.Token,
				modeName(e.Mode), e.Payload, e.Detail})
		}
		return json.NewEncoder(s.out).Encode(out)
	}
	if !settings.Enabled {
		fmt.Fprintln(s.err, `sqldlm: the audit log is off: nothing new is written (turn it on with "sqldlm log on")`)
	}
	if len(entries) == 0 {
		_, err := fmt.Fprintln(s.out, "no audit rows")
		return err
	}
	full := fullWidth(s.out, *wide)
	short := shortener(full)
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME (UTC)\tEVENT\tNAME\tOWNER\tLEASE\tTOKEN\tMODE\tDETAIL")
	for _, e := range entries {
		detail := e.Detail
		if e.Payload != "" {
			detail = strings.TrimSpace(detail + " [" + e.Payload + "]")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.At.Format("2006-01-02 15:04:05.000"), e.Event,
			short(e.Name, 32), short(e.Owner, 20), leaseID(e.LeaseID, full), e.Token, modeName(e.Mode), short(detail, 40))
	}
	return tw.Flush()
}
