//go:build windows

package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

const lockPoll = 20 * time.Millisecond

// lockFile blocks until it holds an exclusive LockFileEx lock on path or ctx
// ends. Windows drops the lock when the process dies.
func lockFile(ctx context.Context, path string) (func(context.Context) error, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open migration lock file: %w", err)
	}
	for {
		ol := new(windows.Overlapped)
		err := windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
		if err == nil {
			break
		}
		if !errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for migration lock %s: %w", path, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
	return func(context.Context) error { return f.Close() }, nil
}
