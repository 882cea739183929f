package dsn

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Every DSN form the CLI may be handed (and the ones it refuses) shows no
// password once redacted, and keeps what identifies the server.
func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct{ raw, want string }{
		{"postgres://u:Hunter2pw@db.example:6432/app?sslmode=disable", "postgres://u:xxxxx@db.example:6432/app?sslmode=disable"},
		{"postgres://u@db.example/app?password=Hunter2pw&sslmode=disable", "postgres://u@db.example/app?password=xxxxx&sslmode=disable"},
		{"postgres://u@db.example/app?sslpassword=Hunter2pw", "postgres://u@db.example/app?sslpassword=xxxxx"},
		{"mysql://root:s%40Hunter2pw@10.0.0.5:3307/app", "mysql://root:xxxxx@10.0.0.5:3307/app"},
		{"mysql://root:Hunter2pw@h:bad port/db", "…@h:bad port/db"},
		{"postgres://h:bad port/db?password=Hunter2pw", "postgres://h:bad port/db?password=xxxxx"},
		{"host=db user=u password=Hunter2pw dbname=app", "host=db user=u password=xxxxx dbname=app"},
		{"host=db password='Hunter2 pw' dbname=app", "host=db password=xxxxx dbname=app"},
		{"host=db PASSWORD = Hunter2pw", "host=db PASSWORD = xxxxx"},
		{"root:Hunter2pw@tcp(127.0.0.1:3306)/test", "root:xxxxx@tcp(127.0.0.1:3306)/test"},
		{"root:Hun@ter2pw@tcp(127.0.0.1:3306)/test", "root:xxxxx@tcp(127.0.0.1:3306)/test"},
		{"root@tcp(127.0.0.1:3306)/test", "root@tcp(127.0.0.1:3306)/test"},
		{"jdbc:mysql://root:Hunter2pw@h:3306/db", "jdbc:mysql://root:xxxxx@h:3306/db"},
		{"jdbc:postgresql://u:Hunter2pw@h/db?password=Hunter2pw", "jdbc:postgresql://u:xxxxx@h/db?password=xxxxx"},
		{"sqlite:///tmp/x.db", "sqlite:///tmp/x.db"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, Redact(tt.raw), tt.raw)
		require.NotContains(t, Redact(tt.raw), "Hunter2", tt.raw)
		require.NotContains(t, Redact(tt.raw), "ter2pw", tt.raw)
		if tt.raw != tt.want {
			require.NotEmpty(t, Passwords(tt.raw), tt.raw)
			require.NotContains(t, Scrub("error: "+tt.raw, tt.raw), "Hunter2", tt.raw)
		}
	}
	// A driver's message may show the decoded password.
	require.Equal(t, "access denied for root:xxxxx", Scrub("access denied for root:s@Hunter2pw", "mysql://root:s%40Hunter2pw@h/db"))
	// A refused DSN's error, and the translations it suggests, do not
	// repeat the password either.
	for _, raw := range []string{"host=db password=Hunter2pw port=many", "root:Hunter2pw@tcp(127.0.0.1:3306)/",
		"root:Hunter2pw@dbhost:3306/test", "pgsql://root:Hunter2pw@dbhost/test", "jdbc:mysql://root:Hunter2pw@h/db", "mysql://root:Hunter2pw@tcp(h:3306)/"} {
		_, err := Parse(raw)
		require.Error(t, err, raw)
		require.NotContains(t, err.Error(), "Hunter2pw", raw)
	}
}
