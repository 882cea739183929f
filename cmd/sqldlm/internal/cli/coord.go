package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/sqldlm/sqldlm"
)

const membersSynopsis = `GROUP --dsn URL [--watch] [--interval 1s] [--output table|json]

Shows the live members of GROUP (services that joined it with
Client.Join): id, owner, incarnation, weight, how long ago each joined,
when its lease expires unless renewed, and its meta; with the group's
generation, which changes with every join, leave, update and expiry.
With --watch the table is redrawn every --interval (in JSON, one object
per line, only when the generation changed).`

type membersJSON struct {
	Group      string       `json:"group"`
	Generation int64        `json:"generation"`
	Members    []memberJSON `json:"members"`
}

type memberJSON struct {
	ID               string    `json:"id"`
	Owner            string    `json:"owner"`
	Incarnation      int64     `json:"incarnation"`
	Weight           float64   `json:"weight"`
	Joined           time.Time `json:"joined"`
	ExpiresInSeconds float64   `json:"expires_in_seconds"`
	Meta             string    `json:"meta"`
}

func runMembers(ctx context.Context, args []string, s streams) error {
	fs := newFlagSet("members", membersSynopsis, s.err)
	dsnURL := dsnFlag(fs)
	watch := fs.Bool("watch", false, "refresh every --interval until interrupted")
	interval := durationFlag(fs, "interval", time.Second, "with --watch: refresh interval")
	output := outputFlag(fs)
	wide := wideFlag(fs)
	group, err := parseNamed(fs, args, "GROUP", "sqldlm members GROUP --dsn URL", dsnURL, output)
	if err != nil {
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
	last := int64(-1)
	for {
		v, err := admin.Members(ctx, group)
		switch {
		case errors.Is(err, sqldlm.ErrInvalidMember):
			return &usageError{err.Error()}
		case err != nil && *watch && ctx.Err() != nil:
			return nil
		case err != nil:
			return fmt.Errorf("list members: %w", dbErr(err))
		}
		switch {
		case *output == "json":
			if v.Generation != last {
				if err := json.NewEncoder(s.out).Encode(toMembersJSON(v)); err != nil {
					return err
				}
			}
		default:
			if *watch {
				fmt.Fprint(s.out, "\033[H\033[2J") // clear the screen, cursor home
				fmt.Fprintf(s.out, "sqldlm members %s  %s  (every %s, Ctrl-C to stop)\n\n", group, time.Now().Format("15:04:05"), *interval)
			}
			if err := printMembers(s.out, v, fullWidth(s.out, *wide)); err != nil {
				return err
			}
		}
		last = v.Generation
		if !*watch {
			return nil
		}
		if !sleepOrDone(ctx, *interval) {
			return nil
		}
	}
}

func toMembersJSON(v sqldlm.GroupView) membersJSON {
	out := membersJSON{Group: v.Group, Generation: v.Generation, Members: []memberJSON{}}
	for _, m := range v.Members {
		out.Members = append(out.Members, memberJSON{m.ID, m.Owner, m.Incarnation, m.Weight, m.Joined, m.ExpiresIn.Seconds(), m.Meta})
	}
	return out
}

func printMembers(w io.Writer, v sqldlm.GroupView, full bool) error {
	short := shortener(full)
	if len(v.Members) == 0 {
		_, err := fmt.Fprintf(w, "no live members in %q (generation %d)\n", v.Group, v.Generation)
		return err
	}
	fmt.Fprintf(w, "group %q, generation %d, %d member(s)\n", v.Group, v.Generation, len(v.Members))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tOWNER\tINCARNATION\tWEIGHT\tJOINED\tEXPIRES\tMETA")
	now := time.Now()
	for _, m := range v.Members {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%g\t%s ago\t%s\t%s\n", short(m.ID, 16), short(m.Owner, 16), m.Incarnation, m.Weight,
			age(now.Sub(m.Joined)), age(m.ExpiresIn), short(m.Meta, 24))
	}
	return tw.Flush()
}

const leaderSynopsis = `ELECTION --dsn URL [--output table|json]

Shows the leader of ELECTION (Client.Campaign, Client.Lead, or sqldlm run
--leader): its owner, term (a fencing token, higher for every new
leadership), since when it leads and the value it proclaimed. Exits 3 when
the election has no live leader.`

// ExitNoLeader: sqldlm leader found no live leader.
const ExitNoLeader = 3

type leaderJSON struct {
	Election string    `json:"election"`
	Owner    string    `json:"owner"`
	Term     int64     `json:"term"`
	Since    time.Time `json:"since"`
	Value    string    `json:"value"`
}

func runLeader(ctx context.Context, args []string, s streams) error {
	fs := newFlagSet("leader", leaderSynopsis, s.err)
	dsnURL := dsnFlag(fs)
	output := outputFlag(fs)
	election, err := parseNamed(fs, args, "ELECTION", "sqldlm leader ELECTION --dsn URL", dsnURL, output)
	if err != nil {
		return err
	}
	db, admin, err := openAdmin(ctx, *dsnURL)
	if err != nil {
		return err
	}
	defer db.Close()
	li, err := admin.Leader(ctx, election)
	switch {
	case errors.Is(err, sqldlm.ErrInvalidName):
		return &usageError{err.Error()}
	case errors.Is(err, sqldlm.ErrNoLeader):
		if *output == "json" {
			if err := json.NewEncoder(s.out).Encode(map[string]any{"election": election, "leader": nil}); err != nil {
				return err
			}
			return &exitError{code: ExitNoLeader}
		}
		return &exitError{code: ExitNoLeader, msg: fmt.Sprintf("election %q has no live leader", election)}
	case err != nil:
		return fmt.Errorf("read leader: %w", dbErr(err))
	}
	if *output == "json" {
		return json.NewEncoder(s.out).Encode(map[string]any{"election": election,
			"leader": leaderJSON{election, li.Owner, li.Term, li.Since, li.Value}})
	}
	_, err = fmt.Fprintf(s.out, "%s leads %q since %s (term %d)%s\n", li.Owner, election,
		li.Since.Local().Format(time.DateTime), li.Term, valueSuffix(li.Value))
	return err
}

func valueSuffix(v string) string {
	if v == "" {
		return ""
	}
	return fmt.Sprintf(", value %q", v)
}

// parseNamed is parseCommand for a command whose one argument (named what)
// comes before or after its flags.
func parseNamed(fs *flag.FlagSet, args []string, what, example string, dsnURL, output *string) (string, error) {
	var name string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	if err := parseFlags(fs, args); err != nil {
		return "", err
	}
	switch {
	case name == "" && fs.NArg() == 1:
		name = fs.Arg(0)
	case fs.NArg() > 0:
		return "", usagef("unexpected argument %q: %s", fs.Arg(0), example)
	}
	if name == "" {
		return "", usagef("missing %s: %s", what, example)
	}
	if err := requireDSN(*dsnURL); err != nil {
		return "", err
	}
	return name, checkOutput(*output)
}
