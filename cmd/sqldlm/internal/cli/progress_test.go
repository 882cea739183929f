package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Progress lines (\r-rewritten) go to terminals only: /dev/null is a
// character device but no terminal, so 2>/dev/null gets none; nor do pipes
// and files.
func TestProgressOnlyOnATerminal(t *testing.T) {
	t.Parallel()
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer devNull.Close()
	require.False(t, newProgress(devNull).tty, "/dev/null")

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	require.False(t, newProgress(w).tty, "a pipe")

	f, err := os.Create(filepath.Join(t.TempDir(), "progress"))
	require.NoError(t, err)
	defer f.Close()
	require.False(t, newProgress(f).tty, "a file")
}
