package sqldlm_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The README's walk-through programs are the example programs, verbatim,
// and those build: a new user who copies them gets code that compiles.
func TestREADMEProgramsBuild(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	dirs, err := filepath.Glob(filepath.Join("examples", "*", "main.go"))
	require.NoError(t, err)
	require.NotEmpty(t, dirs)
	for _, f := range dirs {
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		require.Contains(t, string(readme), "```go\n"+string(src)+"```", "README.md holds %s verbatim", f)
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build the examples with")
	}
	out, err := exec.Command("go", "build", "-o", os.DevNull, "./examples/...").CombinedOutput()
	require.NoError(t, err, "go build ./examples/...: %s", strings.TrimSpace(string(out)))
}
